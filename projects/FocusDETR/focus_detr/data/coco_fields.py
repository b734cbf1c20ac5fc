"""The annotation fields of a COCO json that only the COCO evaluator or detectron2's loader reads: ``area``,
``segmentation``, ``ignore`` and ``keypoints``. Focus-DETR uses boxes alone, but these decide what is scored, or
whether the json loads at all.

pycocotools decides by ``area``, not by the box, which ground-truth objects count (all: 0 to 1e10) and how
(small / medium / large): area -1 on half the boxes silently lowered AP 5.58 -> 4.65, area 1e11 made every metric
NaN, and a string area failed the evaluation after the whole inference; refused. A missing area is counted: only
evaluation needs it (:func:`focus_detr.data.checks.check_evaluable` refuses a test set without). An area of 0, or
larger than its box, is counted for a warning: it changes only the size breakdown (APs / APm / APl).
detectron2's loader asserts on ``ignore``, fails with a TypeError on keypoints that are not numbers and on a
malformed RLE, and silently drops an annotation, box included, whose polygons are all invalid (while the evaluator
still scores the box): refused.
"""
import math

from .coco_boxes import box_ref, describe_box, type_name

__all__ = ["AREA_FIX", "field_problem"]

# pycocotools' area range "all": a ground-truth object with an area outside it is ignored by every metric
MAX_AREA = 1e10
# A pixel-count area (a rasterised mask) exceeds a polygon's float box by up to about a pixel on each side: in a test
# of 20,000 small random polygons 1.3% had an area above w * h, none above (w + 1) * (h + 1)
AREA_ROUNDING = 1.0
# type(value) in this, not isinstance: a bool is no area
_NUMBER_TYPES = frozenset((int, float))
_MAX_FLOAT = 1.7976931348623157e308
AREA_FIX = "give the object's area in pixels (its mask's, or width * height of its bbox for box-only data)"
_SEGMENTATION_FIX = "fix the segmentation, or remove it for box-only data"


def _short(value, limit=60):
    """``repr(value)``, cut to ``limit`` characters (a segmentation can be thousands of numbers long, an integer
    thousands of digits)."""
    if type(value) is int and abs(value) > _MAX_FLOAT:
        return f"<an integer of {len(str(abs(value)))} digits>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _kind(value):
    """What ``value`` is, for a message: "a string", "a number", ..."""
    return "a number" if type(value) in _NUMBER_TYPES else type_name(value)


def _numbers_problem(values):
    """Which value of the list ``values`` is not a number ("'a' (a string) at #2"), or None."""
    try:
        math.fsum(values)  # one pass in C for the common case; a bool passes (detectron2 adds 0.5 to it all right)
        return None
    except (TypeError, OverflowError, ValueError):  # not a number; an integer beyond a float, or inf - inf: see which
        pass
    for index, value in enumerate(values):
        if type(value) not in (int, float, bool):
            return f"{_short(value)} ({_kind(value)}) at #{index}"
        if type(value) is int and not -_MAX_FLOAT <= value <= _MAX_FLOAT:
            return f"{_short(value)} at #{index}"
    return None


def _keypoints_problem(annotation, image):
    """Why the annotation's ``keypoints`` would fail detectron2's loader (it adds 0.5 to each coordinate), or None.
    Focus-DETR does not use them; an empty or absent field is not read."""
    keypoints = annotation.get("keypoints")
    if not keypoints:
        return None
    if type(keypoints) is not list:
        why = f"{_short(keypoints)} ({_kind(keypoints)}), not a list"
    else:
        why = _numbers_problem(keypoints)
        if why is None:
            return None
        why = f"holding {why}"
    return (f"{describe_box(box_ref(annotation, image))} has keypoints {why}: keypoints are a list of numbers "
            "[x1, y1, v1, x2, y2, v2, ...], and detectron2's loader fails on anything else; fix them, or remove them "
            "(Focus-DETR does not use them)")


def _polygon_problem(index, polygon):
    """Why ``polygon``, #``index`` of a segmentation, is not one detectron2 keeps, or None."""
    if type(polygon) is not list:
        return f"polygon #{index} is {_kind(polygon)}, not a list"
    if len(polygon) < 6 or len(polygon) % 2:
        return f"polygon #{index} has {len(polygon)} value{'s' if len(polygon) != 1 else ''}"
    why = _numbers_problem(polygon)
    return f"polygon #{index} holds {why}" if why else None


def _rle_problem(rle):
    """Why the segmentation dict ``rle`` is not an RLE detectron2's loader (pycocotools' frPyObjects) reads, or
    None."""
    if "counts" not in rle or "size" not in rle:
        return "it has no 'counts'" if "counts" not in rle else "it has no 'size' ([height, width])"
    size, counts = rle["size"], rle["counts"]
    if type(size) is not list or len(size) != 2 or not all(type(side) is int and side >= 0 for side in size):
        return f"its 'size' is {_short(size)}, not [height, width] (2 integers >= 0)"
    if type(counts) is str:
        return None  # compressed: read as it is
    # uncompressed counts become uint32 in frPyObjects: a negative or larger count, or a non-integer, fails there
    if type(counts) is not list or not set(map(type, counts)) <= {int} or counts and not (
            0 <= min(counts) and max(counts) < 2**32):
        return f"its 'counts' is {_short(counts)}, not a string or a list of integers from 0 to 2**32 - 1"
    return None


def _are_valid_polygons(segmentation):
    """Whether every polygon of the list ``segmentation`` is at least 6 numbers, an even count: the common case,
    tested with as little work as possible (a COCO-size json has 860,000 segmentations)."""
    for polygon in segmentation:
        if type(polygon) is not list or len(polygon) < 6 or len(polygon) & 1:
            return False
        try:
            sum(polygon)  # one pass in C; a string, null or list in it raises
        except (TypeError, OverflowError):  # OverflowError: an integer beyond a float next to a float
            return False
    return True


def _segmentation_problem(annotation, image):
    """Why the annotation's truthy ``segmentation`` (not polygons :func:`_are_valid_polygons` passed) would fail
    detectron2's loader or make it drop the annotation (box included, while the COCO evaluator still scores the
    box), or None."""
    segmentation = annotation["segmentation"]
    box = describe_box(box_ref(annotation, image))
    if type(segmentation) is dict:
        why = _rle_problem(segmentation)
        return f"{box} has an RLE segmentation that detectron2's loader cannot read: {why}; {_SEGMENTATION_FIX}" \
            if why else None
    if type(segmentation) is not list:
        why = f"it is {_kind(segmentation)} ({_short(segmentation)})"
    else:
        why = next(filter(None, (_polygon_problem(index, polygon) for index, polygon in enumerate(segmentation))), None)
        if why is None:
            return None
    return (f"{box} has an invalid segmentation: {why}, where a polygon is a list of at least 6 numbers [x1, y1, x2, "
            "y2, x3, y3, ...]; detectron2 drops an annotation without a valid polygon, box included, which the COCO "
            f"evaluator still scores; {_SEGMENTATION_FIX}")


def _ignore_problem(annotation, image):
    # detectron2's loader asserts ignore == 0 (pycocotools would overwrite it with iscrowd)
    if annotation.get("ignore", 0) == 0:
        return None
    return (f"{describe_box(box_ref(annotation, image))} has ignore {_short(annotation['ignore'])}, which "
            "detectron2's loader does not support (an assertion); remove the field, or mark a region to ignore with "
            "iscrowd 1")


def _area_problem(annotation, image):
    """Why the annotation's ``area`` is not a number COCO evaluation can count the object by, or None."""
    area = annotation["area"]
    if type(area) not in _NUMBER_TYPES:
        why = f"has area {_short(area)} ({_kind(area)}): an area is a number"
    elif type(area) is float and not math.isfinite(area):  # an integer beyond a float is caught by the range below
        why = f"has area {area!r}: an area is a finite number"
    elif area < 0 or area > MAX_AREA:
        why = (f"has area {_short(area)}: COCO evaluation ignores objects whose area is outside 0 to 1e10, so this "
               "one would not count")
    else:
        return None
    return f"{describe_box(box_ref(annotation, image))} {why}; {AREA_FIX}"


def _fits_box(area, bbox):
    """Whether ``area`` (a number in range) can be the area of an object in the usable ``bbox``: at most the box's,
    and 0 only for a box of no area."""
    width, height = bbox[2], bbox[3]
    return area <= (width + AREA_ROUNDING) * (height + AREA_ROUNDING) and (area > 0 or width * height == 0)


def field_problem(annotation, image, bbox, report):
    """Why a field other than the ids, category, crowd flag and box of the annotation is refused, or None: its
    area, segmentation, ``ignore`` and keypoints. ``bbox`` is usable (4 finite numbers, width and height >= 0).
    Annotations without an area go to ``report.missing_area``, those whose area does not fit the box to
    ``report.misfit_area`` (BoxTally). Each field is tested fast first; a COCO-size json has 860,000."""
    area = annotation.get("area")
    # the common case in one test: a positive number within 1e10 and the box (NaN fails the comparisons)
    if not (type(area) in _NUMBER_TYPES and 0 < area <= MAX_AREA
            and area <= (bbox[2] + AREA_ROUNDING) * (bbox[3] + AREA_ROUNDING)):
        if "area" not in annotation:
            report.missing_area.add(box_ref(annotation, image))
        else:
            problem = _area_problem(annotation, image)
            if problem:
                return problem
            if not _fits_box(area, bbox):
                report.misfit_area.add(box_ref(annotation, image))
    segmentation = annotation.get("segmentation")
    if segmentation and not (type(segmentation) is list and _are_valid_polygons(segmentation)):
        problem = _segmentation_problem(annotation, image)
        if problem:
            return problem
    if "ignore" in annotation or "keypoints" in annotation:
        return _ignore_problem(annotation, image) or _keypoints_problem(annotation, image)
    return None
