"""The autocast settings: train.inference_amp is off by default, turns evaluation to bfloat16 when on, and bad values
are one line."""
import os

import pytest
import torch

from engine_test_utils import REPO_ROOT, TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)
from focus_detr.engine import evaluate, inference_amp_dtype, load_config, resolve_amp_dtype, training_amp_dtype


def test_inference_and_training_run_in_float32_by_default():
    cfg = load_config(os.path.join(REPO_ROOT, "configs", "focus_detr_r50_4scale_12ep.py"))
    assert cfg.train.inference_amp.enabled is False and cfg.train.amp.enabled is False
    assert inference_amp_dtype(cfg, "cpu") is None and training_amp_dtype(cfg, "cpu") is None
    # a config without the entries (e.g. written before them) is float32 too
    assert inference_amp_dtype({"train": {}}, "cpu") is None


def test_precision_names():
    assert resolve_amp_dtype("auto", "cpu") == torch.bfloat16
    assert resolve_amp_dtype("bf16", "cpu") == torch.bfloat16 and resolve_amp_dtype("fp16", "cpu") == torch.float16
    enabled = {"train": {"inference_amp": {"enabled": True, "precision": "bfloat16"}}}
    assert inference_amp_dtype(enabled, "cpu") == torch.bfloat16


def test_float16_on_the_cpu_is_said_to_be_slower_once(caplog, monkeypatch):
    # it runs, about 11x slower than float32 for a training step, and nothing said why
    import collections

    from detectron2.utils import logger as detectron2_logger

    monkeypatch.setattr(detectron2_logger, "_LOG_COUNTER", collections.Counter())
    fp16 = {"train": {"amp": {"enabled": True, "precision": "float16"}}}
    with caplog.at_level("WARNING"):
        assert training_amp_dtype(fp16, "cpu") == torch.float16
        assert training_amp_dtype(fp16, "cpu") == torch.float16
        assert training_amp_dtype({"train": {"amp": {"enabled": True, "precision": "bfloat16"}}}, "cpu")
    warned = [r.getMessage() for r in caplog.records if "slower than float32" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("train.amp.precision float16 on the CPU is slower than float32")


def test_evaluation_runs_under_bfloat16_autocast_when_enabled(toy_dataset):
    from detectron2.config import instantiate

    seen = {}
    for enabled in (False, True):
        cfg = load_config(TOY_CONFIG, [f"train.inference_amp.enabled={enabled}", "train.output_dir="])
        torch.manual_seed(0)
        model = instantiate(cfg.model).eval()
        dtypes = set()
        model.class_embed.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
        evaluate(cfg, model)
        seen[enabled] = dtypes
    assert seen == {False: {torch.float32}, True: {torch.bfloat16}}


def _cli_error(train_net, capsys, *argv):
    code = train_net.cli(["--config-file", TOY_CONFIG, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    return err[-1]


@pytest.mark.parametrize("mode", [["--eval-only"], ["train.max_iter=1"]])
def test_a_bad_inference_precision_is_one_line_before_any_work(train_net, toy_dataset, capsys, tmp_path, mode):
    line = _cli_error(train_net, capsys, *mode, "train.inference_amp.precision=fp8", f"train.output_dir={tmp_path}")
    assert line == "error: train.inference_amp.precision must be one of auto, bfloat16, bf16, float16, fp16; got 'fp8'"
    assert not (tmp_path / "model_final.pth").exists()


def test_a_non_boolean_enabled_is_one_line(train_net, toy_dataset, capsys, tmp_path):
    line = _cli_error(
        train_net, capsys, "--eval-only", "train.inference_amp.enabled=yes", f"train.output_dir={tmp_path}"
    )
    assert "train.inference_amp.enabled" in line
