"""eval_results.json is standard JSON: a metric COCO leaves undefined (NaN) is null, and reads back as NaN."""
import json
import math

import pytest

from focus_detr.engine.evaluation import read_eval_results, write_eval_results


def _refuse_constant(name):
    raise AssertionError(f"{name} is not JSON")


def test_undefined_metrics_are_null_and_read_back_as_nan(tmp_path):
    path = tmp_path / "eval_results.json"
    results = {"bbox": {"AP": 5.5, "APl": float("nan")}, "selection_quality": {"object_recall/layer0": 98.2}}
    write_eval_results(path, results)
    strict = json.loads(path.read_text(), parse_constant=_refuse_constant)  # as JavaScript's JSON.parse reads it
    assert strict["bbox"] == {"AP": 5.5, "APl": None}
    read = read_eval_results(path)
    assert read["bbox"]["AP"] == 5.5 and math.isnan(read["bbox"]["APl"])
    assert read["selection_quality"] == results["selection_quality"]


def test_infinite_values_are_not_written_as_javascript_would_refuse_them(tmp_path):
    with pytest.raises(ValueError):
        write_eval_results(tmp_path / "eval_results.json", {"bbox": {"AP": float("inf")}})


def test_eval_results_say_what_the_numbers_are_of(tmp_path):
    # the weights, which of their weights, the precision, the test data and the keep ratios: each moves the AP, and
    # nothing beside the numbers said which were used
    import os

    from engine_test_utils import TOY_CONFIG, TOY_DATASET
    from toy_detector import register_toy_dataset

    from focus_detr.engine import load_config, run_evaluation, run_training

    register_toy_dataset(TOY_DATASET, str(tmp_path / "data"))
    run = tmp_path / "run"
    run_training(load_config(TOY_CONFIG, [f"train.output_dir={run}", "train.max_iter=2"]))
    weights = str(run / "model_final.pth")
    run_evaluation(load_config(TOY_CONFIG, [f"train.output_dir={tmp_path / 'eval'}", f"train.init_checkpoint={weights}",
                                            "train.model_ema.enabled=True"]))
    evaluated = read_eval_results(os.path.join(tmp_path, "eval", "eval_results.json"))["evaluated"]
    assert evaluated == {"weights": weights, "weights_used": "trained", "precision": "float32",
                         "test_sets": [TOY_DATASET], "test_batch_size": 1}


def test_a_focus_detr_evaluation_records_its_keep_ratios():
    from conftest import build_tiny_model
    from omegaconf import OmegaConf

    from focus_detr.engine.inference_weights import evaluation_record

    model = build_tiny_model()
    model.transformer.foreground_selector.keep_ratio = 0.3
    cfg = OmegaConf.create({"train": {"inference_amp": {"enabled": True, "precision": "bfloat16"}},
                            "dataloader": {"test": {"dataset": {"names": ["a", "b"]}, "batch_size": 2}}})
    assert evaluation_record(cfg, model, "cpu", "", "random") == {
        "weights": "", "weights_used": "random", "precision": "bfloat16", "test_sets": ["a", "b"],
        "test_batch_size": 2, "keep_ratio": 0.3, "cascade_keep_ratios": [1.0, 0.8]}
