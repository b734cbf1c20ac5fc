"""Detections read back from a COCO results json (the ``coco_instances_results.json`` an evaluation writes, or any
file of that format), checked entry by entry and grouped per image, in a dataset's contiguous class ids
(``tools/visualize_json_results.py``)."""
import json
import math
import numbers
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict

import numpy as np
from detectron2.data import MetadataCatalog

__all__ = ["ImageDetections", "read_coco_results"]


@dataclass
class ImageDetections:
    """One image's detections: boxes ``(N, 4)`` XYXY in its pixels, scores ``(N,)``, classes ``(N,)`` (contiguous)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float's range (JSON integers have no limit)
        return False


def _shown(value) -> str:
    """``repr(value)``, cut to a readable length (a JSON integer may have thousands of digits)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _entry_problem(entry) -> str:
    """Why ``entry`` is not a COCO detection result ({"image_id", "category_id", "bbox": [x, y, w, h], "score"}), or
    "" when it is one."""
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, not an object with image_id, category_id, bbox and score"
    missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in entry]
    if missing:
        return f"has no {', '.join(missing)}"
    if not (_is_integer(entry["image_id"]) or isinstance(entry["image_id"], str)):
        return f"image_id {_shown(entry['image_id'])} is not an integer or a string"
    if not _is_integer(entry["category_id"]):
        return f"category_id {_shown(entry['category_id'])} is not an integer"
    if not _is_finite_number(entry["score"]):
        return f"score {_shown(entry['score'])} is not a finite number"
    bbox = entry["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
        return f"bbox {_shown(bbox)} is not 4 finite numbers [x, y, width, height]"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox {_shown(bbox)} has a negative width or height"
    if not all(math.isfinite(float(bbox[i]) + float(bbox[i + 2])) for i in (0, 1)):
        return f"bbox {_shown(bbox)} reaches beyond the range of floating-point numbers"
    return ""


def _load_list(path: str) -> list:
    """The JSON list in ``path``; ValueError / FileNotFoundError (one line) for anything else."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"results file not found: {path}")
    if not os.path.isfile(path):  # a pipe would block forever, a folder fail
        raise ValueError(f"{path} is not a regular file")
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"{path} is not a JSON file: {type(error).__name__}: {error}") from None
    if not isinstance(results, list):
        raise ValueError(f"{path} holds a JSON {type(results).__name__}, not the list of detections a COCO results "
                         "file holds (coco_instances_results.json)")
    return results


def read_coco_results(path: str, dataset_name: str) -> Dict[object, ImageDetections]:
    """``image_id -> ImageDetections`` of the COCO results json ``path``, whose ``category_id``\\ s are
    ``dataset_name``'s json ids (mapped to its contiguous class ids; the dataset must have been loaded, which records
    that mapping). ValueError (one line, naming the entry) for an entry that is not a detection or names a category the
    dataset does not have."""
    to_contiguous = MetadataCatalog.get(dataset_name).get("thing_dataset_id_to_contiguous_id", None)
    grouped = defaultdict(list)
    for index, entry in enumerate(_load_list(path)):
        problem = _entry_problem(entry)
        if problem:
            raise ValueError(f"{path}: entry {index} {problem}")
        category = entry["category_id"]
        if to_contiguous is not None:
            if category not in to_contiguous:
                raise ValueError(f"{path}: entry {index} has category_id {category}, which {dataset_name} does not "
                                 f"have (its ids: {sorted(to_contiguous)}); were these results written for another "
                                 "dataset?")
            category = to_contiguous[category]
        x, y, width, height = (float(v) for v in entry["bbox"])
        box = [x, y, x + width, y + height]  # in float64: detectron2's BoxMode goes through float32
        grouped[entry["image_id"]].append((box, float(entry["score"]), category))
    return {
        image_id: ImageDetections(
            np.asarray([d[0] for d in detections], np.float64).reshape(-1, 4),
            np.asarray([d[1] for d in detections], np.float64),
            np.asarray([d[2] for d in detections], np.int64),
        )
        for image_id, detections in grouped.items()
    }
