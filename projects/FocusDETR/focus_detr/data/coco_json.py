"""Checks that a COCO json holds what detectron2's loader, the training mapper and pycocotools read, and that its
ids and file names mean one thing each, which they all assume without checking.

pycocotools indexes images by id, so two images with one id silently become one (the last), and the annotations of
both are scored against it: ``--eval-only`` on such a json (issue 20) reported AP 0.130 where the same data with
distinct ids gives 0.075. An annotation whose ``image_id`` no image has is dropped without a word, and an image
listed twice is trained on and scored twice. Two categories with one id are two classes to detectron2 and one to
pycocotools (training asks for one class too many, the final evaluation fails an assertion). A missing or mistyped
field (a bbox of 3 values or of strings, an image without ``height``, ids of mixed types) stops detectron2 with a
traceback deep in loading or training. All are refused here, naming the json and the entry, in one pass over it.

Boxes (tested by :mod:`.coco_boxes`): a negative width or height is refused (detectron2 would train on another box),
and so are NaN, infinite and out-of-float32-range coordinates; boxes training ignores (no area inside their image)
or clips (reaching outside it) are counted for a warning, as the COCO evaluator scores them as written.

The fields only the COCO evaluator or detectron2's loader reads (area, segmentation, ``ignore``, keypoints) are
checked by :mod:`.coco_fields`.
"""
import dataclasses
import math
import os
from typing import Optional

from .coco_boxes import (
    BoxRef,
    BoxTally,
    bbox_shape_problem,
    bbox_text,
    bbox_value_problem,
    box_fit,
    box_ref,
    describe_box,
    is_non_finite,
    is_ordinary_box,
    type_name,
)
from .coco_fields import field_problem

__all__ = ["CocoJsonReport", "coco_json_problem", "coco_json_report"]

# Every box under this many pixels on both sides, in images of at least PIXEL_IMAGE_SIDE pixels: fractions, not pixels
SUB_PIXEL_SIDE = 1.5
PIXEL_IMAGE_SIDE = 15


@dataclasses.dataclass
class CocoJsonReport:
    """What :func:`coco_json_report` found in one COCO json.

    Attributes:
        problem (str or None): why the json cannot be used (one line, without the file's name).
        non_finite_box (BoxRef or None): the first box with a NaN or infinite coordinate (refused as well; kept apart
            so that it is reported like the same box found in loaded dataset dicts).
        empty_boxes (BoxTally): boxes with no area inside their image (zero width or height, or outside it):
            training drops them, the COCO evaluator counts them as objects to find. Crowd boxes are not counted.
        outside_boxes (BoxTally): boxes reaching more than a pixel outside their image: training clips them, the
            evaluator scores them as written. Crowd boxes are not counted.
        shared_names (dict): category name -> its ids, for names that several categories have: legal, but they
            are separate classes to the model that evaluation tables and drawings cannot tell apart.
        missing_area (BoxTally): annotations without an ``area``, which COCO evaluation needs (a KeyError after
            the whole inference) and training does not.
        misfit_area (BoxTally): annotations whose area is 0 for a box of positive size, or larger than the box
            (beyond a pixel of rounding): COCO evaluation counts them as objects of another size.
        sub_pixel_boxes (BoxTally): all boxes (count, the first as example) when every one is under
            ``SUB_PIXEL_SIDE`` pixels on both sides while every image is at least ``PIXEL_IMAGE_SIDE`` pixels on both:
            coordinates given as fractions of the image (0..1), most likely; empty otherwise.
        boxes_read_as_corners (bool): some boxes reach outside their image, and every box, read as corners
            [x1, y1, x2, y2] instead of [x, y, width, height], lies inside it: corners, most likely (Pascal VOC's
            form).
        warned_datasets (set): the datasets whose warnings about these boxes and names were logged (a report is one
            version of a file, cached: each dataset using it warns once).
        class_names (list or None): the categories' names sorted by id, as detectron2 numbers the classes (None when
            the json has a problem).
    """

    problem: Optional[str] = None
    non_finite_box: Optional[BoxRef] = None
    empty_boxes: BoxTally = dataclasses.field(default_factory=BoxTally)
    outside_boxes: BoxTally = dataclasses.field(default_factory=BoxTally)
    shared_names: dict = dataclasses.field(default_factory=dict)
    missing_area: BoxTally = dataclasses.field(default_factory=BoxTally)
    misfit_area: BoxTally = dataclasses.field(default_factory=BoxTally)
    sub_pixel_boxes: BoxTally = dataclasses.field(default_factory=BoxTally)
    boxes_read_as_corners: bool = False
    warned_datasets: set = dataclasses.field(default_factory=set)
    class_names: Optional[list] = None


def _usable_id(value):
    # bool is an int subclass, and True == 1 would make it collide with image 1; NaN equals nothing, itself
    # included, so no lookup finds its image
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _annotation_id_problem(index, annotation_id):
    """Why ``annotation_id`` cannot score in COCO evaluation, or None. pycocotools keeps, per detection, the id of
    the object it matched in a float64 array, where 0 means "no match": an object of id 0 is never found, a string
    or an integer beyond float64 stops the evaluation after the whole inference."""
    if not _usable_id(annotation_id) or isinstance(annotation_id, str):
        return f"annotation #{index} (0-based) has id {annotation_id!r}, not a number; COCO evaluation needs numbers"
    if annotation_id == 0:
        return (f"annotation #{index} (0-based) has id 0, which COCO evaluation reads as 'matched nothing': a correct "
                "detection of it would count as a miss; number the annotations from 1")
    try:
        float(annotation_id)
    except OverflowError:
        digits = str(abs(annotation_id))
        return (f"annotation #{index} (0-based) has an id of {len(digits)} digits ({digits[:8]}...), too large for "
                "COCO evaluation, which keeps ids as float64; number the annotations from 1")
    return None


def _is_positive_integer(value):
    # 416.0 is accepted: detectron2 compares the image's size with ==, for which 416.0 and 416 are the same
    if type(value) is float:
        return value.is_integer() and value > 0
    return type(value) is int and value > 0


def _list_problem(coco, key):
    """Why ``coco[key]`` (absent: empty) is not a list of objects, or None."""
    entries = coco.get(key, [])
    if not isinstance(entries, list):
        return f"'{key}' is a {type(entries).__name__}, not a list"
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            return f"{key} entry #{index} (0-based) is a {type(entry).__name__}, not an object"
    return None


def _image_size_problem(image):
    for key in ("height", "width"):
        if key not in image:
            return (
                f"image id {image['id']} ({image['file_name']!r}) has no '{key}'; give each image its height and width"
            )
        value = image[key]
        if not _is_positive_integer(value):
            kind = "" if type(value) in (int, float) else f" ({type_name(value)})"
            return (
                f"image id {image['id']} ({image['file_name']!r}) has {key} {value!r}{kind}: height and width must be "
                "positive integers, the image's size in pixels"
            )
    return None


def _file_key(file_name, image_root, real_folders):
    """The file an image's ``file_name`` names, as a key: one file spelled two ways ("a.png" and "./a.png"; with the
    image root, also "/data/images/a.png" or through a linked folder) gives one key. Only folders are resolved (each
    once, cached in ``real_folders``): os.path.realpath of every file would add 1.6 s for COCO's 118,287 images, as
    much as the rest of the pass, so a file that is itself a symbolic link is not followed."""
    if image_root is None:
        return "", os.path.normpath(file_name)
    if "/" not in file_name and file_name not in (".", ".."):  # a file in the root itself, as in COCO: cheaply
        folder, base = image_root, file_name
    else:  # as detectron2 joins them: an absolute name wins
        folder, base = os.path.split(os.path.normpath(os.path.join(image_root, file_name)))
    real_folder = real_folders.get(folder)
    if real_folder is None:
        real_folder = real_folders[folder] = os.path.realpath(folder)
    return real_folder, base


def _duplicate_file_problem(first, image_id, file_name, key):
    first_id, first_name = first
    if os.path.normpath(first_name) == os.path.normpath(file_name):
        return (
            f"images {first_id} and {image_id} both name the file {file_name!r}; list each image once "
            "(twice, it is trained on and scored twice)"
        )
    return (
        f"images {first_id} and {image_id} name one file, {first_name!r} and {file_name!r} (both "
        f"{os.path.join(*key)}); list each image once (twice, it is trained on and scored twice)"
    )


def _image_problem(images, images_by_id, image_root=None):
    """The first problem of the ``images`` entries, or None; fills ``images_by_id`` (id -> entry) on the way. With
    ``image_root``, two entries naming one file are found whatever the spelling (:func:`_file_key`)."""
    files, real_folders = {}, {}
    first_string_id = None  # whether the ids are strings (True) or numbers (False), from the first image
    for index, image in enumerate(images):
        image_id, file_name = image.get("id"), image.get("file_name")
        if not _usable_id(image_id):
            return f"image #{index} (0-based, file_name {file_name!r}) has id {image_id!r}, not a number"
        if image_id in images_by_id:
            return (
                f"image id {image_id} is used by two images ({images_by_id[image_id].get('file_name')!r} and "
                f"{file_name!r}); image ids must be unique, or their annotations are scored against one of them"
            )
        # detectron2 sorts the image ids: numbers and strings do not compare
        if first_string_id is None:
            first_string_id = isinstance(image_id, str)
        elif isinstance(image_id, str) != first_string_id:
            first = next(iter(images_by_id))
            return (
                f"image ids mix numbers and strings (image id {first!r} and image id {image_id!r}); give all images "
                "ids of one kind, numbers as in COCO"
            )
        images_by_id[image_id] = image
        if not isinstance(file_name, str) or not file_name or "\0" in file_name:  # no path holds a NUL
            return f"image id {image_id} has file_name {file_name!r}, not a file name"
        key = _file_key(file_name, image_root, real_folders)
        if key in files:
            return _duplicate_file_problem(files[key], image_id, file_name, key)
        files[key] = (image_id, file_name)
        problem = _image_size_problem(image)
        if problem:
            return problem
    return None


def _category_problem(categories, names_by_id, report):
    """The first problem of the ``categories`` entries, or None; fills ``names_by_id`` (id -> name) and the report's
    ``shared_names`` on the way."""
    if not categories:
        return "no categories: list the dataset's classes in the json's 'categories'"
    for index, category in enumerate(categories):
        category_id, name = category.get("id"), category.get("name")
        if type(category_id) is not int:
            return f"category #{index} (0-based, name {name!r}) has id {category_id!r}, not an integer"
        if category_id in names_by_id:
            return (
                f"category id {category_id} is used by two categories ({names_by_id[category_id]!r} and {name!r}); "
                "category ids must be unique (detectron2 would count two classes, the COCO evaluator one)"
            )
        if not isinstance(name, str):
            return f"category id {category_id} has name {name!r}, not a class name"
        names_by_id[category_id] = name
    ids_by_name = {}
    for category_id, name in names_by_id.items():
        ids_by_name.setdefault(name, []).append(category_id)
    report.shared_names = {name: ids for name, ids in ids_by_name.items() if len(ids) > 1}
    return None


def _unusual_box_problem(annotation, image, report):
    """Why the annotation's box, one :func:`is_ordinary_box` did not pass, is refused, or None. A NaN / infinite box
    is put in ``report.non_finite_box`` instead; a usable one is counted if training drops or clips it."""
    bbox = annotation.get("bbox")
    why = bbox_shape_problem(bbox)
    if why is None and is_non_finite(bbox):
        report.non_finite_box = box_ref(annotation, image)
        return None
    why = why or bbox_value_problem(bbox)
    if why:
        box = describe_box(box_ref(annotation, image))
        if "bbox" not in annotation:
            return f"{box} has no 'bbox'; give each annotation its box [x, y, width, height]"
        return f"{box} has bbox {bbox_text(bbox)}: {why}; fix or remove it"
    fit = box_fit(bbox, image)
    # a crowd box is neither trained on nor an object to find (the evaluator ignores detections in it): not counted
    if fit is not None and not annotation.get("iscrowd", 0):
        (report.empty_boxes if fit == "empty" else report.outside_boxes).add(box_ref(annotation, image))
    return None


def _unknown_category_problem(annotation, names_by_id):
    annotation_id, image_id = annotation.get("id"), annotation.get("image_id")
    if "category_id" not in annotation:
        return f"annotation id {annotation_id} of image_id {image_id} has no category_id; give each annotation one"
    category_id = annotation["category_id"]
    known = sorted(names_by_id)
    shown = ", ".join(map(str, known[:10])) + (", ..." if len(known) > 10 else "")
    if type(category_id) is not int:
        # 1.0 or '1' is not category 1 to detectron2's id map: "not among the categories" would only puzzle
        return (
            f"annotation id {annotation_id} of image_id {image_id} has category_id {category_id!r}, not an integer; "
            f"give it the integer id of one of the json's categories (ids {shown})"
        )
    return (
        f"annotation id {annotation_id} of image_id {image_id} has category_id {category_id}, which is not among the "
        f"json's categories (ids {shown}); add the category or fix the annotation"
    )


def _sub_pixel_boxes(annotations, images_by_id):
    """The tally of all boxes, which are all under SUB_PIXEL_SIDE on both sides, when every image is at least
    PIXEL_IMAGE_SIDE pixels on both sides (an empty tally otherwise): coordinates in 0..1, most likely."""
    if min(min(image["height"], image["width"]) for image in images_by_id.values()) < PIXEL_IMAGE_SIDE:
        return BoxTally()  # tiny images may hold tiny boxes
    first = annotations[0]
    return BoxTally(len(annotations), box_ref(first, images_by_id[first["image_id"]]))


_CROWD_FLAGS = frozenset((0, 1))


def _annotation_problem(annotations, images_by_id, names_by_id, report):
    """The first problem of the ``annotations`` entries, or None; a NaN / infinite box stops the pass too (in
    ``report.non_finite_box``), and boxes training drops or clips are counted in ``report``."""
    seen = set()
    sub_pixel = True  # every box so far is under SUB_PIXEL_SIDE on both sides
    corners = True  # every box so far, read as corners [x1, y1, x2, y2], lies in its image
    for index, annotation in enumerate(annotations):
        annotation_id = annotation.get("id")
        problem = _annotation_id_problem(index, annotation_id)
        if problem:
            return problem
        if annotation_id in seen:
            return f"annotation id {annotation_id} is used by two annotations; annotation ids must be unique"
        seen.add(annotation_id)
        image_id = annotation.get("image_id")
        image = images_by_id.get(image_id) if _usable_id(image_id) else None
        if image is None:
            return (
                f"annotation id {annotation_id} has image_id {image_id!r}, which no image has; fix the image_id or "
                "remove the annotation"
            )
        category_id = annotation.get("category_id")
        if type(category_id) is not int or category_id not in names_by_id:  # type(): unhashable values, bools
            return _unknown_category_problem(annotation, names_by_id)
        crowd = annotation.get("iscrowd", 0)
        if type(crowd) not in (int, float, bool) or crowd not in _CROWD_FLAGS:
            # "0", a string, is a crowd to both the mapper (!= 0) and pycocotools (truthy): silently never trained on
            return (f"annotation id {annotation_id} of image_id {image_id} has iscrowd {crowd!r}"
                    f"{' (' + type_name(crowd) + ')' if type(crowd) not in (int, float) else ''}: iscrowd is 0 or 1")
        bbox = annotation.get("bbox")
        if not is_ordinary_box(bbox, image):  # most boxes cost this test only
            problem = _unusual_box_problem(annotation, image, report)
            if problem or report.non_finite_box:
                return problem
        problem = field_problem(annotation, image, bbox, report)  # bbox: 4 finite numbers, width and height >= 0
        if problem:
            return problem
        if sub_pixel:
            sub_pixel = bbox[2] < SUB_PIXEL_SIDE and bbox[3] < SUB_PIXEL_SIDE
        if corners:
            corners = bbox[0] < bbox[2] <= image["width"] + 1 and bbox[1] < bbox[3] <= image["height"] + 1
    if sub_pixel and annotations:
        report.sub_pixel_boxes = _sub_pixel_boxes(annotations, images_by_id)
    report.boxes_read_as_corners = corners and report.outside_boxes.count > 0
    return None


def coco_json_report(coco, image_root=None):
    """Checks the parsed COCO json ``coco`` in one pass, linear in its number of images and annotations.

    Refused (``problem``, one line without the file's name): a top level that is not an object; ``images`` /
    ``annotations`` / ``categories`` that are not lists of objects; no categories; an image or annotation id that is
    not a number or string, image ids mixing both; duplicate image ids; two images naming one file (with
    ``image_root``, the folder detectron2 joins the file names to, however the file is spelled); an image without
    positive integer ``height`` and ``width``; a category id that is not an integer, or used twice; a category
    without a name; duplicate annotation ids; an annotation whose ``image_id`` no image has or whose ``category_id``
    no category has (or is not an integer); an ``iscrowd`` other than 0 or 1; a bbox that is missing, not 4 numbers,
    beyond float32's range or of negative width or height; the fields :func:`.coco_fields.field_problem` refuses
    (an ``area`` that is not a finite number from 0 to 1e10, an ``ignore``, keypoints or a segmentation
    detectron2's loader fails on or drops the box for). Also refused, in ``non_finite_box``: a NaN or infinite bbox
    coordinate. Counted: boxes training drops or clips, annotations without an area or with one that does not fit
    their box, boxes all under a pixel and a half.

    Returns:
        CocoJsonReport
    """
    report = CocoJsonReport()
    if not isinstance(coco, dict):
        report.problem = f"the top level is a {type(coco).__name__}, not an object with 'images' and 'annotations'"
        return report
    images_by_id, names_by_id = {}, {}
    report.problem = (
        _list_problem(coco, "images") or _list_problem(coco, "annotations") or _list_problem(coco, "categories")
        or _image_problem(coco.get("images", []), images_by_id, image_root)
        or _category_problem(coco.get("categories", []), names_by_id, report)
        or _annotation_problem(coco.get("annotations", []), images_by_id, names_by_id, report)
    )
    if report.problem is None:
        report.class_names = [names_by_id[category_id] for category_id in sorted(names_by_id)]
    return report


def coco_json_problem(coco):
    """What is wrong with the parsed COCO json ``coco`` (one line, without the file's name), or None
    (:func:`coco_json_report`)."""
    report = coco_json_report(coco)
    if report.problem is None and report.non_finite_box is not None:
        box = report.non_finite_box
        return f"{describe_box(box)} has a bbox that is not finite numbers: {box.bbox}; fix or remove it"
    return report.problem
