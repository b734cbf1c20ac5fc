"""Checks on detectron2 datasets before they are used: annotations the evaluator and the losses can trust, the
number of classes a model must have for them, and one-line errors (instead of detectron2's bare assertions) for a
dataset with no usable image.

A COCO json is checked first (:func:`check_dataset_jsons`, see :mod:`focus_detr.data.coco_json`): inconsistent ids,
missing or mistyped fields and boxes of negative size change what is trained on and scored without a word, or stop
detectron2 with a traceback deep in loading or training. Boxes that training drops (no area inside their image) or
clips (reaching outside it) are legal but scored as written by the COCO evaluator: one warning per dataset says how
many there are (:mod:`.box_warnings`).

A NaN or infinite box is refused, never dropped: the COCO evaluator reads the dataset's json file itself, so a box
dropped from the training dicts would still be scored (a NaN ground-truth box silently raised AP from 0.228 to 0.320).
The same loader function serves training and test data, so both refuse the same boxes.
"""
import contextlib
import json
import math
import os
import re

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.utils.file_io import PathManager

from .box_warnings import box_example, box_report_of_records, count_of_annotations, warn_about_legal_surprises
from .coco_fields import AREA_FIX
from .coco_json_file import check_coco_json

__all__ = [
    "DatasetClassesError",
    "check_dataset_jsons",
    "check_declared_classes",
    "check_evaluable",
    "check_finite_boxes",
    "check_num_classes",
    "class_difference",
    "dataset_classes",
    "declared_category_ids",
    "get_checked_dataset_dicts",
]


def as_list(names):
    return [names] if isinstance(names, str) else list(names)


def _is_finite(bbox):
    try:
        return all(math.isfinite(float(value)) for value in bbox)
    except (TypeError, ValueError, OverflowError):
        return False


def _non_finite_box_message(names, which, file_name, image_id, bbox):
    """The one line for a NaN / infinite box, the same whether the json check or the loaded dicts found it."""
    return (
        f"dataset {', '.join(map(repr, names))}: {which} of image {file_name} (image_id {image_id}) has a bbox that "
        f"is not finite numbers: {list(bbox)}; fix or remove it"
    )


def check_finite_boxes(dataset_dicts, names):
    """Raises ValueError naming the dataset, image and annotation of the first box with a NaN / infinite coordinate
    (for COCO-json datasets :func:`check_dataset_jsons` finds it first; this serves datasets of other sources).

    Args:
        dataset_dicts (list[dict]): detectron2 dataset dicts.
        names (str or list[str]): the datasets they come from (for the message).
    """
    names = as_list(names)
    for record in dataset_dicts:
        for index, annotation in enumerate(record.get("annotations", ())):
            bbox = annotation.get("bbox", None)
            if bbox is None or _is_finite(bbox):
                continue
            which = f"annotation id {annotation['id']}" if "id" in annotation else f"annotation #{index} (0-based)"
            file_name, image_id = record.get("file_name"), record.get("image_id")
            raise ValueError(_non_finite_box_message(names, which, file_name, image_id, bbox))


def json_of(name):
    json_file = MetadataCatalog.get(name).get("json_file", None)
    return f" ({json_file})" if json_file else ""


# detectron2's error for datasets of one loader with other class lists
_DIFFERENT_CLASSES = "Datasets have different metadata 'thing_classes'!"


def _different_classes_message(names):
    """The one line for datasets ``names`` of one loader that name their classes otherwise (detectron2 said "Datasets
    have different metadata 'thing_classes'!", naming neither): the first dataset that differs from the first one,
    and the first class where; None when they name the same classes (a tuple and a list, which detectron2 tells
    apart). Called after such a failure only, when every dataset's classes are loaded."""
    classes = [list(MetadataCatalog.get(name).get("thing_classes", None) or ()) for name in names]
    other = next((index for index in range(1, len(names)) if classes[index] != classes[0]), None)
    if other is None:
        return None
    index, first, second = class_difference(classes[0], classes[other])
    return (f"the datasets {names[0]}{json_of(names[0])} and {names[other]}{json_of(names[other])} of one loader "
            f"name their classes differently: class {index} is {first} in {names[0]} and {second} in "
            f"{names[other]}; their class indices would mean other classes (give their jsons the same categories "
            "with the same ids: classes are numbered in the order of their ids)")


def class_difference(first, second):
    """``(index, name in first, name in second)`` of the first class index where the class name lists ``first`` and
    ``second`` differ (names as ``repr``, "missing" past the end of the shorter), or None when they are the same:
    what the lines for two class lists that mean other classes name."""
    first, second = list(first), list(second)
    if first == second:
        return None
    index = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))

    def at(names):
        return repr(names[index]) if index < len(names) else "missing"

    return index, at(first), at(second)


def _not_a_list_message(names):
    """The one line for a dataset of ``names`` whose registered function returned something without a length (a
    generator: detectron2's "object of type 'generator' has no len()"), or None when each has one. Called after such
    a failure only: it runs the functions again."""
    for name in names:
        records = DatasetCatalog.get(name)
        if not hasattr(records, "__len__"):
            return (f"dataset {name!r}: its registered function returned a {type(records).__name__}, not a list of "
                    "dicts (DatasetCatalog.register(name, func): func() must return a list, e.g. list(...))")
    return None


@contextlib.contextmanager
def dataset_errors_in_one_line(names):
    """Turns detectron2's assertions for unusable datasets into ValueErrors that name the dataset and say what is
    wrong, as well as the TypeError of a dataset function that returns no list and its ValueError for datasets of
    other classes; other errors pass unchanged."""
    try:
        yield
    except ValueError as error:
        message = _different_classes_message(names) if str(error) == _DIFFERENT_CLASSES else None
        if message is None:
            raise
        raise ValueError(message) from None
    except TypeError as error:
        message = _not_a_list_message(names)
        if message is None:
            raise
        raise ValueError(message) from error
    except AssertionError as error:
        text = str(error)
        category = re.fullmatch(r"Got an invalid category_id=(-?\d+)(?: for a dataset of (\d+) classes)?", text)
        if category:  # detectron2's class histogram, before training
            shown = ", ".join(f"{name!r}{json_of(name)}" for name in names)
            classes = MetadataCatalog.get(names[0]).get("thing_classes", None) or ()
            count = int(category.group(2) or len(classes))
            raise ValueError(f"dataset {shown}: an annotation has category_id {category.group(1)}, but the dataset "
                             f"has {count} classes (thing_classes): the category_id of records registered in code "
                             f"is the class's index, from 0 to {count - 1}") from None
        empty = re.fullmatch(r"Dataset '(.*)' is empty!", text)
        if empty:
            name = empty.group(1)
            raise ValueError(f"dataset {name!r}{json_of(name)} is empty: it lists no images") from None
        if text.startswith("No valid data found in "):
            # detectron2 also drops annotations whose polygons are all invalid, but the json check refuses those
            # before loading: crowd boxes (or none) are what is left to say
            shown = ", ".join(f"{name!r}{json_of(name)}" for name in names)
            raise ValueError(
                f"No valid data found in dataset {shown}: no image has a box that is not crowd (iscrowd 0), and "
                "training uses only such images"
            ) from None
        raise


class DatasetClassesError(ValueError):
    """A dataset whose metadata gives ``thing_classes`` other than its COCO json's categories sorted by id: detectron2
    sets the json's when it loads the dataset, and refused the other value with an assertion and a traceback."""


def _check_given_classes(name, json_file, json_classes):
    """Raises :class:`DatasetClassesError` (one line) when the metadata of dataset ``name`` gives ``thing_classes``
    that are not ``json_classes``, its json's names sorted by id; the same names as a tuple are the same classes."""
    given = MetadataCatalog.get(name).get("thing_classes", None)
    if given is None or json_classes is None or (not isinstance(given, str) and list(given) == list(json_classes)):
        return
    raise DatasetClassesError(
        f"dataset {name!r} ({json_file}): its metadata gives thing_classes {given!r}, but its json's categories, "
        f"sorted by id as detectron2 numbers the classes, are {list(json_classes)!r}: give thing_classes in that "
        "order, or leave them out of the registration's metadata (they are read from the json)"
    )


def _reports(names):
    """(name, json file, report) of each dataset of ``names`` that has a COCO json (checked, cached, and the
    ``thing_classes`` its metadata gives compared with the json's)."""
    for name in as_list(names):
        metadata = MetadataCatalog.get(name)
        json_file = metadata.get("json_file", None)
        if json_file:
            # as detectron2's load_coco_json reads it (a local path stays as it is)
            report = check_coco_json(PathManager.get_local_path(json_file), what=f"dataset {name!r}",
                                     image_root=metadata.get("image_root", None))
            _check_given_classes(name, json_file, report.class_names)
            yield name, json_file, report


def check_declared_classes(names):
    """Raises :class:`DatasetClassesError` (one line) when a dataset of ``names`` is registered with metadata
    ``thing_classes`` that are not its COCO json's categories sorted by id; datasets whose metadata gives none, or
    without a json, are not read. Its json is checked first (:func:`check_dataset_jsons`' errors)."""
    given = [name for name in as_list(names) if MetadataCatalog.get(name).get("thing_classes", None) is not None]
    for _ in _reports(given):
        pass


def check_evaluable(names):
    """Raises ValueError when a dataset of ``names``, scored by COCO evaluation, lacks what only that reads: an
    ``area`` for every annotation (training does without; pycocotools fails with a KeyError after the whole
    inference, and during training that lost the run); and of a dataset registered in code, every record's
    ``image_id``, ``height`` and ``width`` (a KeyError traceback at the same point)."""
    for name in as_list(names):
        if not MetadataCatalog.get(name).get("json_file", None):
            _check_records_have_coco_fields(name)
    for name, json_file, report in _reports(names):
        missing = report.missing_area
        if missing.count:
            raise ValueError(
                f"dataset {name!r} ({json_file}): {count_of_annotations(missing.count)} without an 'area', "
                f"{box_example(missing.example)}, which COCO evaluation needs to score this test set; {AREA_FIX}"
            )


def _check_records_have_coco_fields(name):
    """Raises ValueError naming the first record of dataset ``name``, registered in code, that lacks what COCO
    evaluation reads (detectron2 converts the records to a COCO json): ``image_id``, ``height`` and ``width``, which
    training does without (the mapper reads the size from the image)."""
    with dataset_errors_in_one_line([name]):
        records = DatasetCatalog.get(name)
        for index, record in enumerate(records):
            missing = [key for key in ("image_id", "height", "width") if key not in record]
            if missing:
                raise ValueError(f"dataset {name!r}: record #{index} (0-based, {record.get('file_name')}) has no "
                                 f"{', '.join(repr(key) for key in missing)}, which COCO evaluation needs to score "
                                 "the test set: give every record of a dataset registered in code an image_id and "
                                 "the image's height and width")


def check_dataset_jsons(names):
    """Raises ValueError naming the dataset, its json and the entry when the COCO json of a dataset of ``names``
    cannot be used as written (:func:`focus_detr.data.coco_json.coco_json_report`: inconsistent ids, missing or
    mistyped fields, boxes of negative size or with NaN / infinite coordinates); warns once per dataset about boxes
    training drops or clips. Datasets without a ``json_file`` are not checked."""
    for name, json_file, report in _reports(names):
        box = report.non_finite_box
        if box is not None:
            # named as check_finite_boxes names it in the loaded dicts, where the file name includes the image root
            file_name = os.path.join(MetadataCatalog.get(name).get("image_root", ""), box.file_name)
            raise ValueError(
                _non_finite_box_message([name], f"annotation id {box.annotation_id}", file_name, box.image_id, box.bbox)
            )
        warn_about_legal_surprises(name, json_file, report)


# The registrations in code (dataset name, id of its function) whose boxes were checked in this process.
_CHECKED_IN_CODE = set()


def get_checked_dataset_dicts(names, filter_empty=True, **kwargs):
    """detectron2's ``get_detection_dataset_dicts`` (same arguments), after :func:`check_dataset_jsons`, refusing
    non-finite boxes (:func:`check_finite_boxes`), and with one-line ValueErrors for an empty dataset and a dataset
    left with no image by ``filter_empty`` ("No valid data found")."""
    if not as_list(names):  # detectron2 asserts: "AssertionError: []"
        raise ValueError("a dataset loader's names is empty: name at least one registered dataset, e.g. "
                         "dataloader.train.dataset.names=trees_train")
    check_dataset_jsons(names)
    with dataset_errors_in_one_line(as_list(names)):
        dataset_dicts = get_detection_dataset_dicts(names, filter_empty=filter_empty, **kwargs)
    check_finite_boxes(dataset_dicts, names)
    # a training run loads its test set up to three times: warned once per registration
    registered = tuple((name, id(DatasetCatalog[name])) for name in as_list(names))
    if registered not in _CHECKED_IN_CODE and not any(MetadataCatalog.get(name).get("json_file", None)
                                                      for name in as_list(names)):
        _CHECKED_IN_CODE.add(registered)
        warn_about_legal_surprises(", ".join(as_list(names)), "registered in code",
                                    box_report_of_records(dataset_dicts))
    return dataset_dicts


def dataset_classes(name):
    """The ``thing_classes`` of dataset ``name``, or None when its metadata has none. COCO-json datasets set them
    when first loaded, so the dataset is loaded if needed (its json checked first)."""
    metadata = MetadataCatalog.get(name)
    if metadata.get("thing_classes", None) is None:
        check_dataset_jsons([name])
        with dataset_errors_in_one_line([name]):
            DatasetCatalog.get(name)
    return metadata.get("thing_classes", None)


def declared_classes(name):
    """The class names dataset ``name`` declares, ordered as detectron2 numbers them, without loading its images'
    records: its metadata's ``thing_classes``, else its COCO json's categories sorted by id (read, not checked: for a
    dataset a command only compares, e.g. the training set of an evaluation); None when neither says. Raises
    OSError / ValueError when the json cannot be read and the metadata gives no classes, and
    :class:`DatasetClassesError` when it gives others than the json's (before the dataset's first load, which
    would refuse them)."""
    metadata = MetadataCatalog.get(name)
    given = metadata.get("thing_classes", None)
    json_file = metadata.get("json_file", None)
    # a dataset loaded already has the json's classes in its metadata (and the id map detectron2 sets with them)
    if json_file is None or (given is not None and metadata.get("thing_dataset_id_to_contiguous_id", None)):
        return None if given is None else list(given)
    try:
        json_classes = _json_class_names(json_file)
    except (OSError, ValueError, KeyError, TypeError):
        if given is None:
            raise
        return list(given)  # the given names, not compared with a json that cannot be read here
    _check_given_classes(name, json_file, json_classes)
    return list(given) if given is not None else json_classes


def _json_categories(json_file):
    """The categories of the COCO json ``json_file`` sorted by id (as detectron2 numbers the classes), read without
    checking the rest; None when it has no list of categories."""
    with PathManager.open(json_file) as f:
        categories = json.load(f).get("categories", None)
    if not isinstance(categories, list):
        return None
    return sorted(categories, key=lambda category: category["id"])


def _json_class_names(json_file):
    categories = _json_categories(json_file)
    return None if categories is None else [category["name"] for category in categories]


def declared_category_ids(name):
    """The dataset category id of each class index of dataset ``name`` (e.g. ``[3, 7, 42]``), without loading its
    images' records: its metadata's ``thing_dataset_id_to_contiguous_id`` (set once detectron2 has loaded the
    json), else its COCO json's category ids in order, as detectron2 numbers them; None when neither says (a
    dataset registered in code) or the map is not one id per index. Raises OSError / ValueError when the json
    cannot be read."""
    metadata = MetadataCatalog.get(name)
    to_index = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if to_index is None:
        json_file = metadata.get("json_file", None)
        categories = _json_categories(json_file) if json_file is not None else None
        ids = None if categories is None else [category["id"] for category in categories]
        return ids if ids and all(type(i) is int for i in ids) and len(set(ids)) == len(ids) else None
    if not isinstance(to_index, dict) or sorted(to_index.values()) != list(range(len(to_index))):
        return None
    return [int(category_id) for category_id in sorted(to_index, key=to_index.get)]


def check_num_classes(num_classes, names, what="model.num_classes"):
    """Raises ValueError when a dataset of ``names`` has a number of classes other than ``num_classes``.
    Datasets without class metadata are not checked."""
    for name in as_list(names):
        classes = dataset_classes(name)
        if classes is None or len(classes) == num_classes:
            continue
        shown = ", ".join(map(str, classes[:5])) + (", ..." if len(classes) > 5 else "")
        raise ValueError(
            f"{what} is {num_classes} but dataset {name!r} has {len(classes)} class"
            f"{'es' if len(classes) != 1 else ''} ({shown}): set {what}={len(classes)}"
        )
