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
