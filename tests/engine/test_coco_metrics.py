"""A model that detects nothing scores COCO's AP 0 where there is something to find, as pycocotools scores it, not
detectron2's NaN (which also read as "no ground truth" and was left out of the ablation's means)."""
import contextlib
import io
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from focus_detr.engine.coco_metrics import metrics_of_no_detections


def _coco(annotations, categories=(1, 2, 3)):
    api = COCO()
    api.dataset = {
        "images": [{"id": 1, "width": 800, "height": 600}, {"id": 2, "width": 800, "height": 600}],
        "categories": [{"id": c, "name": f"class{c}"} for c in categories],
        "annotations": [{"id": i + 1, "image_id": 1 + i % 2, "iscrowd": 0, **a} for i, a in enumerate(annotations)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def _pycocotools_without_a_hit(api):
    """pycocotools' metrics for one detection that overlaps nothing (it cannot load no detections at all): the same
    as none, COCO's -1 as NaN."""
    far = [{"image_id": 1, "category_id": api.getCatIds()[0], "bbox": [-1e4, -1e4, 1, 1], "score": 0.5}]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(api, api.loadRes(far), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    metrics = dict(zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], evaluation.stats[:6]))
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    for index, category in enumerate(api.getCatIds()):
        per_class = precision[:, :, index]
        metrics[f"AP-class{category}"] = float(np.mean(per_class[per_class > -1])) if (per_class > -1).any() else -1
    return {key: math.nan if value < 0 else float(value) for key, value in metrics.items()}


GROUND_TRUTHS = {
    "every size, two classes": [{"category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
                                {"category_id": 2, "bbox": [0, 0, 50, 50], "area": 2500},
                                {"category_id": 2, "bbox": [0, 0, 200, 200], "area": 40000}],
    "medium boxes only, a crowd region": [{"category_id": 3, "bbox": [5, 5, 40, 40], "area": 1600},
                                          {"category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1}],
    "no area field": [{"category_id": 1, "bbox": [0, 0, 100, 100]}],
}


@pytest.mark.parametrize("annotations", list(GROUND_TRUTHS.values()), ids=list(GROUND_TRUTHS))
def test_no_detections_score_as_pycocotools_scores_them(annotations):
    api = _coco(annotations)
    if any("area" not in a for a in annotations):  # pycocotools needs the area; we take the box's when it is missing
        for annotation in api.dataset["annotations"]:
            annotation.setdefault("area", annotation["bbox"][2] * annotation["bbox"][3])
    ours = metrics_of_no_detections(_coco(annotations), ["class1", "class2", "class3"])
    expected = _pycocotools_without_a_hit(api)
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert (math.isnan(ours[key]) and math.isnan(value)) or ours[key] == value, key


def test_without_scored_ground_truth_the_metrics_stay_undefined():
    assert metrics_of_no_detections(_coco([])) is None
    assert metrics_of_no_detections(_coco([{"category_id": 1, "bbox": [0, 0, 9, 9], "area": 81, "iscrowd": 1}])) is None
    one_class = metrics_of_no_detections(_coco([{"category_id": 1, "bbox": [0, 0, 9, 9], "area": 81}]), ["tree"])
    assert set(one_class) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}  # as detectron2: no per-class AP for one
