import copy
import re

import pytest
import torch

from conftest import FIXTURE_PATH, REPO_ROOT, TINY_CONFIG
from tools_test_utils import load_script


@pytest.fixture(scope="module")
def check_parity():
    return load_script("tools/check_parity.py", "check_parity")


def _rows(printed, name):
    return [line for line in printed.splitlines() if name in line]


def test_tiny_configuration_reproduces_the_official_outputs(check_parity, parity_fixture, tmp_path, capsys):
    output = tmp_path / "ours.pt"
    code = check_parity.main(
        ["--config-file", str(TINY_CONFIG), "--fixture", str(FIXTURE_PATH), "--output", str(output)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "PARITY OK" in printed
    # Every recorded decision was checked: 2 images x 2 layers of foreground and fine-grained choices, and the
    # query ranking of the 2 images and the 2 training runs.
    assert len(_rows(printed, "foreground tokens")) == 8
    assert len(_rows(printed, "fine-grained tokens")) == 4
    assert len(_rows(printed, "query ranking")) == 4
    saved = torch.load(output, weights_only=True)
    expected = parity_fixture["eval_outputs"]["single"]
    assert len(saved["single"]) == len(expected)
    for ours, official in zip(saved["single"], expected):
        assert ours["pred_logits"].shape == official["pred_logits"].shape
        assert ours["pred_boxes"].shape == official["pred_boxes"].shape
        assert set(ours["postprocessed"][0]) >= {"boxes_xyxy", "scores", "labels"}
    assert set(saved["train_losses"]) == {"no_dn", "dn"}
    assert set(saved["train_losses"]["dn"]) == set(parity_fixture["train_losses"]["dn"]["losses"])


def test_the_configuration_is_inferred_from_the_weights(check_parity, parity_fixture_path, capsys):
    code = check_parity.main(["--fixture", str(parity_fixture_path)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"config: {TINY_CONFIG}" in printed


def test_a_configuration_the_weights_do_not_fit_is_reported_and_replaced(check_parity, parity_fixture_path, capsys):
    r50 = REPO_ROOT / "configs" / "focus_detr_r50_4scale_12ep.py"
    code = check_parity.main(["--config-file", str(r50), "--fixture", str(parity_fixture_path)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"weights do not fit {r50}" in printed and "shape mismatches, e.g. backbone.stem.conv1.weight" in printed
    assert printed.strip().endswith(f"PARITY OK (with {TINY_CONFIG}: the weights do not fit {r50})")


def test_a_different_configuration_fails_the_check(check_parity, parity_fixture_path, capsys):
    code = check_parity.main(
        [
            "--config-file", str(TINY_CONFIG), "--fixture", str(parity_fixture_path),
            "model.transformer.foreground_selector.keep_ratio=0.4",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 1
    assert "PARITY FAILED" in printed and "FAIL" in printed


def _eval_only_fixture(parity_fixture, path):
    fixture = copy.deepcopy(parity_fixture)
    del fixture["train_losses"]
    torch.save(fixture, path)
    return fixture


def test_tied_scores_take_the_official_choice(check_parity, parity_fixture, tmp_path, monkeypatch, capsys):
    # Rounded multi-category scores make hundreds of exact ties, which topk breaks its own way: the official
    # fine-grained sets remain valid choices, so they must be taken, and the outputs then match.
    from focus_detr.modeling.encoder import DualAttentionEncoderLayer

    exact = DualAttentionEncoderLayer.multi_category_scores
    monkeypatch.setattr(
        DualAttentionEncoderLayer, "multi_category_scores", lambda *args: exact(*args).round(decimals=0)
    )
    path = tmp_path / "eval_only.pt"
    _eval_only_fixture(parity_fixture, path)
    code = check_parity.main(["--fixture", str(path)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    differing = [int(re.search(r"(\d+) differ", row).group(1)) for row in _rows(printed, "fine-grained tokens")]
    assert len(differing) == 4 and min(differing) > 0


def test_a_clearly_different_token_choice_fails(check_parity, parity_fixture, tmp_path, capsys):
    path = tmp_path / "eval_only.pt"
    fixture = _eval_only_fixture(parity_fixture, path)
    # Swap the best foreground token of image 0 for one that no layer keeps.
    inds = fixture["eval_outputs"]["single"][0]["debug"]["encoder_in"]["foreground_inds"]
    kept = set(inds[0][0].tolist())
    outside = next(t for t in range(1192) if t not in kept)
    for layer in inds:
        layer[0, 0] = outside
    torch.save(fixture, path)
    code = check_parity.main(["--fixture", str(path)])
    printed = capsys.readouterr().out
    assert code == 1
    rows = [row for row in _rows(printed, "image0 layer") if "foreground tokens" in row]
    assert len(rows) == 2
    assert all(row.endswith("FAIL") and "1 differ" in row for row in rows)


def test_bfloat16_autocast_is_reported_as_a_deviation_never_as_parity(check_parity, parity_fixture_path, capsys):
    code = check_parity.main(["--fixture", str(parity_fixture_path), "--amp", "bf16"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "PARITY OK" not in printed and "DEVIATION REPORT under bfloat16 autocast" in printed
    logits = _rows(printed, "max |d pred_logits|")
    assert len(logits) == 2 and all(row.endswith("FAIL") for row in logits)  # bfloat16 is outside the fp32 tolerance
    assert len(_rows(printed, "official decisions: top-100 same label")) == 2
    assert len(_rows(printed, "own decisions: top-100 same label")) == 2


def test_a_cuda_device_without_a_gpu_is_one_line(check_parity, parity_fixture_path, capsys, monkeypatch):
    from focus_detr.engine.cli import run_reporting_errors

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    code = run_reporting_errors(check_parity.main, ["--fixture", str(parity_fixture_path), "--device", "cuda"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: --device is 'cuda' but no CUDA GPU is visible; use --device cpu"
