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


def test_weights_that_do_not_fit_the_given_config_try_the_configs_closest_to_it_first(check_parity):
    # the official "R101 36ep" config builds an R50 with the 36-epoch position embedding (temperature 20, offset 0):
    # its weights fell back to the first candidate they fit, R50 12ep (temperature 10000), and every row failed
    order = [c.rsplit("/", 1)[-1] for c in
             check_parity._candidates(str(REPO_ROOT / "configs" / "focus_detr_r101_4scale_36ep.py"), [])]
    assert order[0] == "focus_detr_r101_4scale_36ep.py" and len(order) == len(set(order)) > 10
    assert max(order.index("focus_detr_r50_4scale_24ep.py"), order.index("focus_detr_r50_4scale_36ep.py")) < order.index(
        "focus_detr_r50_4scale_12ep.py")
    # without a config: the documented order
    assert check_parity._candidates(None, []) == [str(REPO_ROOT / c) for c in check_parity.CANDIDATE_CONFIGS]


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


def _fixture_copy(parity_fixture, path):
    fixture = copy.deepcopy(parity_fixture)
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
    path = tmp_path / "copy.pt"
    _fixture_copy(parity_fixture, path)
    check_parity.main(["--fixture", str(path)])
    printed = capsys.readouterr().out
    # Only the eval runs: the fixture does not record the training runs' fine-grained choices, so the rounded scores
    # change those runs' losses (docs/parity.md).
    image_rows = [row for row in printed.splitlines() if row.startswith("image")]
    assert len(image_rows) > 8 and all(row.endswith(" ok") for row in image_rows), printed
    differing = [int(re.search(r"(\d+) differ", row).group(1)) for row in _rows(printed, "image")
                 if "fine-grained tokens" in row]
    assert len(differing) == 4 and min(differing) > 0


def test_a_clearly_different_token_choice_fails(check_parity, parity_fixture, tmp_path, capsys):
    path = tmp_path / "copy.pt"
    fixture = _fixture_copy(parity_fixture, path)
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


def test_an_output_that_is_the_fixture_is_refused_before_the_runs(check_parity, parity_fixture_path, tmp_path,
                                                                  capsys):
    # PARITY OK, and the fixture was replaced by the 88 KB of our outputs
    import shutil

    fixture = tmp_path / "fixture.pt"
    shutil.copy(parity_fixture_path, fixture)
    before = fixture.read_bytes()
    line = _one_line_error(check_parity, ["--fixture", str(fixture), "--output", str(tmp_path / "." / "fixture.pt")],
                           capsys)
    assert line == (f"error: --output {tmp_path / '.' / 'fixture.pt'} is the --fixture file: the output would replace "
                    "it; name another file")
    assert fixture.read_bytes() == before


def _one_line_error(check_parity, argv, capsys):
    from focus_detr.engine.cli import run_reporting_errors

    code = run_reporting_errors(check_parity.main, argv)
    captured = capsys.readouterr()
    assert code == 2 and "PARITY" not in captured.out, captured.out
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err.strip()


@pytest.mark.parametrize("remove", ["sections", "inputs", "single"])
def test_a_fixture_missing_what_is_compared_is_refused_never_parity_ok(check_parity, parity_fixture, remove, tmp_path,
                                                                          capsys):
    fixture = dict(parity_fixture)
    if remove == "sections":
        del fixture["eval_outputs"], fixture["train_losses"]
        missing = "eval_outputs['single'] (the official outputs of each image); train_losses (the official"
    elif remove == "inputs":
        fixture["inputs"] = []
        missing = "inputs (no images)"
    else:
        fixture["eval_outputs"] = {"single": []}
        missing = "eval_outputs['single'] (the official outputs of each image)"
    path = tmp_path / "partial.pt"
    torch.save(fixture, path)
    error = _one_line_error(check_parity, ["--fixture", str(path)], capsys)
    assert error.startswith(f"error: cannot use fixture {path}: it lacks what the parity check compares: {missing}")


def test_an_unknown_override_key_is_one_line(check_parity, parity_fixture_path, capsys):
    error = _one_line_error(check_parity, ["--fixture", str(parity_fixture_path), "model.nonexistent_key=3"], capsys)
    assert error == "error: unknown config key 'model.nonexistent_key' in override 'model.nonexistent_key=3'"


def test_overrides_that_make_the_weights_fit_nothing_are_named_as_a_cause(check_parity, parity_fixture_path,
                                                                         monkeypatch, capsys):
    monkeypatch.setattr(check_parity, "CANDIDATE_CONFIGS", check_parity.CANDIDATE_CONFIGS[:1])  # the tiny one only
    override = "model.transformer.encoder.num_fine_grained_tokens=0"
    error = _one_line_error(check_parity, ["--fixture", str(parity_fixture_path), override], capsys)
    assert error.endswith(f"with the overrides {override}: an override may change the model's shapes (try without "
                          "them), or pass the --config-file the weights were made with")


def test_an_output_that_cannot_be_written_is_refused_before_the_check(check_parity, parity_fixture_path, tmp_path,
                                                                     capsys):
    error = _one_line_error(check_parity, ["--fixture", str(parity_fixture_path), "--output", str(tmp_path)], capsys)
    assert error == f"error: --output {tmp_path} is a folder: give a file name, e.g. {tmp_path / 'ours.pt'}"


def test_a_fixture_without_training_losses_is_checked_on_inference_and_says_so(check_parity, parity_fixture, tmp_path,
                                                                                capsys):
    # a fixture made for inference only (train_losses {}) is still a parity check of every image's outputs
    from focus_detr.engine.cli import run_reporting_errors

    fixture = dict(parity_fixture, train_losses={})
    path = tmp_path / "inference_only.pt"
    torch.save(fixture, path)
    assert run_reporting_errors(check_parity.main, ["--fixture", str(path)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "PARITY OK (inference only: the fixture holds no training losses)")
