import importlib.util

import torch

from conftest import FIXTURE_PATH, REPO_ROOT, TINY_CONFIG


def _check_parity_module():
    spec = importlib.util.spec_from_file_location("check_parity", REPO_ROOT / "tools" / "check_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_configuration_reproduces_the_official_outputs(parity_fixture, tmp_path, capsys):
    output = tmp_path / "ours.pt"
    code = _check_parity_module().main(
        ["--config-file", str(TINY_CONFIG), "--fixture", str(FIXTURE_PATH), "--output", str(output)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "PARITY OK" in printed
    saved = torch.load(output, weights_only=True)
    expected = parity_fixture["eval_outputs"]["single"]
    assert len(saved["single"]) == len(expected)
    for ours, official in zip(saved["single"], expected):
        assert ours["pred_logits"].shape == official["pred_logits"].shape
        assert ours["pred_boxes"].shape == official["pred_boxes"].shape
        assert set(ours["postprocessed"][0]) >= {"boxes_xyxy", "scores", "labels"}
    assert set(saved["train_losses"]) == {"no_dn", "dn"}
    assert set(saved["train_losses"]["dn"]) == set(parity_fixture["train_losses"]["dn"]["losses"])


def test_a_different_configuration_fails_the_check(parity_fixture, capsys):
    code = _check_parity_module().main(
        [
            "--config-file", str(TINY_CONFIG), "--fixture", str(FIXTURE_PATH),
            "model.transformer.foreground_selector.keep_ratio=0.4",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 1
    assert "PARITY FAILED" in printed and "FAIL" in printed
