"""COCO box metrics of a model that detected nothing, which detectron2's ``COCOEvaluator`` leaves undefined.

With no detection at all detectron2 skips COCOeval (pycocotools cannot load an empty results list) and reports every
metric as NaN, which also reads as "the test set has no ground truth". COCO's own rule scores a missed ground-truth
box as recall 0, so such a model's AP is 0 wherever there was something to find, and undefined (NaN) only where
there was not.
"""
import math
from typing import Dict, List, Optional

__all__ = ["metrics_of_no_detections"]

# COCO's object-size ranges (pycocotools' areaRng, both ends inclusive) by detectron2's metric name
_SIZE_RANGES = {"APs": (0, 32 ** 2), "APm": (32 ** 2, 96 ** 2), "APl": (96 ** 2, 1e5 ** 2)}


def _area(annotation) -> float:
    if "area" in annotation:
        return annotation["area"]
    _, _, width, height = annotation["bbox"]
    return width * height


def metrics_of_no_detections(coco_api, class_names: Optional[List[str]] = None) -> Optional[Dict[str, float]]:
    """The box metrics COCO gives a model without detections on the ground truth of ``coco_api`` (a pycocotools
    ``COCO``): 0 for AP, AP50, AP75, for each size range and each class (``AP-<name>``, as detectron2 names them, for
    more than one of ``class_names``, in the order of the sorted category ids) with a box to find; NaN where there is
    none. None when the ground truth holds no box COCO scores (none at all, or crowd regions only)."""
    scored = [ann for ann in coco_api.dataset.get("annotations", []) if not ann.get("iscrowd", 0)]
    if not scored:
        return None
    metrics = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    for name, (low, high) in _SIZE_RANGES.items():
        metrics[name] = 0.0 if any(low <= _area(ann) <= high for ann in scored) else math.nan
    if class_names is not None and len(class_names) > 1:
        annotated = {ann["category_id"] for ann in scored}
        for name, category_id in zip(class_names, sorted(coco_api.getCatIds())):
            metrics[f"AP-{name}"] = 0.0 if category_id in annotated else math.nan
    return metrics
