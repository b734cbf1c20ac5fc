"""Checks on detectron2 datasets before they are used: annotations the evaluator and the losses can trust, the
number of classes a model must have for them, and one-line errors (instead of detectron2's bare assertions and
KeyErrors) for a dataset with no usable image and for a category id the json's ``categories`` lack.

A COCO json is checked first (:func:`check_dataset_jsons`): duplicate image or annotation ids, an annotation of
no image and an image listed twice change what is trained on and scored without a word.

A NaN or infinite box is refused, never dropped: the COCO evaluator reads the dataset's json file itself, so a box
dropped from the training dicts would still be scored (a NaN ground-truth box silently raised AP from 0.228 to 0.320).
The same loader function serves training and test data, so both refuse the same boxes.
"""
import contextlib
import json
import math
import re

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.utils.file_io import PathManager

from .coco_json import check_coco_json

__all__ = [
    "check_dataset_jsons",
    "check_finite_boxes",
    "check_num_classes",
    "dataset_classes",
    "get_checked_dataset_dicts",
]


def _as_list(names):
    return [names] if isinstance(names, str) else list(names)


def _is_finite(bbox):
    try:
        return all(math.isfinite(float(value)) for value in bbox)
    except (TypeError, ValueError):
        return False


def _annotation_ids_in_json(names, image_id, bbox):
    """The json ``id`` of the annotations of ``image_id`` with ``bbox`` (compared by ``repr``, so NaNs match) in the
    COCO json files of ``names`` (detectron2's loader drops the ids)."""
    wanted = [repr(v) for v in bbox]
    ids = []
    for name in names:
        json_file = MetadataCatalog.get(name).get("json_file", None)
        if not json_file:
            continue
        with open(json_file) as f:
            annotations = json.load(f).get("annotations", [])
        ids += [
            a.get("id") for a in annotations
            if a.get("image_id") == image_id and [repr(v) for v in a.get("bbox", [])] == wanted
        ]
    return ids


def check_finite_boxes(dataset_dicts, names):
    """Raises ValueError naming the dataset, image and annotation of the first box with a NaN / infinite coordinate.

    Args:
        dataset_dicts (list[dict]): detectron2 dataset dicts.
        names (str or list[str]): the datasets they come from (for the message and the annotation ids).
    """
    names = _as_list(names)
    for record in dataset_dicts:
        for index, annotation in enumerate(record.get("annotations", ())):
            bbox = annotation.get("bbox", None)
            if bbox is None or _is_finite(bbox):
                continue
            image_id = record.get("image_id")
            ids = [annotation["id"]] if "id" in annotation else _annotation_ids_in_json(names, image_id, bbox)
            which = f"annotation id {ids[0]}" if len(ids) == 1 else f"annotation #{index} (0-based)"
            raise ValueError(
                f"dataset {', '.join(map(repr, names))}: {which} of image {record.get('file_name')} (image_id "
                f"{image_id}) has a bbox that is not finite numbers: {list(bbox)}; fix or remove it"
            )


def _json_of(name):
    json_file = MetadataCatalog.get(name).get("json_file", None)
    return f" ({json_file})" if json_file else ""


def _category_problem(names):
    """A message naming the first json of ``names`` without ``categories``, or the first annotation (dataset, json,
    annotation and image id) whose ``category_id`` is not among its json's ``categories``; None when there is none."""
    for name in names:
        json_file = MetadataCatalog.get(name).get("json_file", None)
        if not json_file:
            continue
        with open(json_file) as f:
            coco = json.load(f)
        known = sorted(c.get("id") for c in coco.get("categories", []))
        if not known:
            return f"dataset {name!r} ({json_file}) has no categories: list its classes in the json's 'categories'"
        for annotation in coco.get("annotations", []):
            if annotation.get("category_id") not in known:
                shown = ", ".join(map(str, known[:10])) + (", ..." if len(known) > 10 else "")
                return (
                    f"dataset {name!r} ({json_file}): annotation id {annotation.get('id')} of image_id "
                    f"{annotation.get('image_id')} has category_id {annotation.get('category_id')}, which is not "
                    f"among the json's categories (ids {shown}); add the category or fix the annotation"
                )
    return None


@contextlib.contextmanager
def _dataset_errors_in_one_line(names):
    """Turns detectron2's errors for unusable datasets (assertions, a KeyError for an unknown category) into
    ValueErrors that name the dataset and say what is wrong; other errors pass unchanged."""
    try:
        yield
    except (KeyError, ValueError) as error:
        # detectron2: a KeyError for an unknown category id, min() of no category ids for a json without categories
        known_symptom = "does not exist in 'categories'" in str(error) or "empty sequence" in str(error)
        message = _category_problem(names) if known_symptom else None
        if message is None:
            raise
        raise ValueError(message) from None
    except AssertionError as error:
        text = str(error)
        empty = re.fullmatch(r"Dataset '(.*)' is empty!", text)
        if empty:
            name = empty.group(1)
            raise ValueError(f"dataset {name!r}{_json_of(name)} is empty: it lists no images") from None
        if text.startswith("No valid data found in "):
            shown = ", ".join(f"{name!r}{_json_of(name)}" for name in names)
            raise ValueError(
                f"No valid data found in dataset {shown}: no image has a box that is not crowd (iscrowd 0), and "
                "training uses only such images"
            ) from None
        raise


def check_dataset_jsons(names):
    """Raises ValueError naming the dataset, its json and the id when the COCO json of a dataset of ``names`` has
    duplicate image or annotation ids, an annotation whose ``image_id`` no image has, or two images naming one file
    (:func:`focus_detr.data.coco_json.coco_json_problem`). Datasets without a ``json_file`` are not checked."""
    for name in _as_list(names):
        json_file = MetadataCatalog.get(name).get("json_file", None)
        if json_file:
            # as detectron2's load_coco_json reads it (a local path stays as it is)
            check_coco_json(PathManager.get_local_path(json_file), what=f"dataset {name!r}")


def get_checked_dataset_dicts(names, filter_empty=True, **kwargs):
    """detectron2's ``get_detection_dataset_dicts`` (same arguments), after :func:`check_dataset_jsons`, refusing
    non-finite boxes (:func:`check_finite_boxes`), and with one-line ValueErrors for an empty dataset, a dataset left
    with no image by ``filter_empty`` ("No valid data found") and a category id the json's ``categories`` lack."""
    check_dataset_jsons(names)
    with _dataset_errors_in_one_line(_as_list(names)):
        dataset_dicts = get_detection_dataset_dicts(names, filter_empty=filter_empty, **kwargs)
    check_finite_boxes(dataset_dicts, names)
    return dataset_dicts


def dataset_classes(name):
    """The ``thing_classes`` of dataset ``name``, or None when its metadata has none. COCO-json datasets set them
    when first loaded, so the dataset is loaded if needed."""
    metadata = MetadataCatalog.get(name)
    if metadata.get("thing_classes", None) is None:
        with _dataset_errors_in_one_line([name]):
            DatasetCatalog.get(name)
    return metadata.get("thing_classes", None)


def check_num_classes(num_classes, names, what="model.num_classes"):
    """Raises ValueError when a dataset of ``names`` has a number of classes other than ``num_classes``.
    Datasets without class metadata are not checked."""
    for name in _as_list(names):
        classes = dataset_classes(name)
        if classes is None or len(classes) == num_classes:
            continue
        shown = ", ".join(map(str, classes[:5])) + (", ..." if len(classes) > 5 else "")
        raise ValueError(
            f"{what} is {num_classes} but dataset {name!r} has {len(classes)} class"
            f"{'es' if len(classes) != 1 else ''} ({shown}): set {what}={len(classes)}"
        )
