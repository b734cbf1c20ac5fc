"""The boxes of a COCO json as detectron2's training and the COCO evaluator see them.

detectron2 turns ``[x, y, width, height]`` into corners, takes their min / max (a negative width becomes another
box), clips the result to the image and drops boxes left empty, while the COCO evaluator scores every box as written.
:mod:`.coco_json` refuses what neither can use and counts what they see differently with these tests.
"""
import dataclasses
import math
from typing import NamedTuple, Optional

__all__ = [
    "BoxRef",
    "BoxTally",
    "bbox_shape_problem",
    "bbox_text",
    "bbox_value_problem",
    "box_fit",
    "box_ref",
    "describe_box",
    "is_non_finite",
    "is_ordinary_box",
    "type_name",
]

# Training holds boxes in float32 tensors: a larger coordinate is no usable number (10**400 does not even convert).
_FLOAT32_MAX = 3.4028234663852886e38
# detectron2's filter_empty_instances drops boxes whose width or height is at most this (in pixels).
_EMPTY_BOX_SIZE = 1e-5
# Rounding puts box edges a fraction of a pixel outside their image in real datasets; that changes no score.
_OUTSIDE_TOLERANCE = 1.0
# type(value) in this, not isinstance: a bool is no coordinate (a set: the fastest test, made 3.4 million times)
_NUMBER_TYPES = frozenset((int, float))


class BoxRef(NamedTuple):
    """One annotation's box, as the messages name it."""

    annotation_id: object
    image_id: object
    file_name: str  # as written in the json (relative to the image root)
    bbox: list
    image_size: tuple  # (width, height) of its image


@dataclasses.dataclass
class BoxTally:
    """How many boxes of a kind a json has, and the first of them."""

    count: int = 0
    example: Optional[BoxRef] = None

    def add(self, box):
        self.count += 1
        if self.example is None:
            self.example = box


def type_name(value):
    return {str: "a string", bool: "a boolean", type(None): "null", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def bbox_shape_problem(bbox):
    """Why ``bbox`` is not a list of 4 numbers, or None."""
    if type(bbox) is not list or len(bbox) != 4:
        return "a bbox is a list of 4 numbers [x, y, width, height]"
    for value in bbox:
        if type(value) not in _NUMBER_TYPES:
            return f"a bbox is 4 numbers [x, y, width, height], and {value!r} is {type_name(value)}"
    return None


def bbox_value_problem(bbox):
    """Why the 4 numbers of ``bbox`` are no box training and evaluation agree on, or None (NaN and infinity are
    reported apart, see :class:`CocoJsonReport`)."""
    x, y, width, height = bbox
    if not (-_FLOAT32_MAX <= x <= _FLOAT32_MAX and -_FLOAT32_MAX <= y <= _FLOAT32_MAX
            and width <= _FLOAT32_MAX and height <= _FLOAT32_MAX):
        return "a coordinate is beyond float32's range (3.4e38), so no usable number for training"
    if width < 0 or height < 0:
        # detectron2 would take the corners' min / max: another box, trained on; the evaluator scores this one
        return "width and height must be >= 0 (a bbox is [x, y, width, height], not two corners)"
    return None


def bbox_text(bbox):
    """``bbox`` as a message shows it: an integer too large for a float by its number of digits, not all of them."""
    if type(bbox) is not list:
        return repr(bbox)
    shown = [
        f"<an integer of {len(str(abs(value)))} digits>" if type(value) is int and abs(value) > _FLOAT32_MAX
        else repr(value)
        for value in bbox
    ]
    return f"[{', '.join(shown)}]"


def is_non_finite(bbox):
    return any(type(value) is float and not math.isfinite(value) for value in bbox)


def box_fit(bbox, image):
    """Where the usable ``bbox`` lies in ``image``: "empty" (no area inside it: training drops the box), "outside"
    (reaching more than a pixel out: training clips it) or None."""
    x, y, width, height = bbox
    right, bottom = x + width, y + height
    image_width, image_height = image["width"], image["height"]
    inside_width = (right if right < image_width else image_width) - (x if x > 0 else 0)
    inside_height = (bottom if bottom < image_height else image_height) - (y if y > 0 else 0)
    if inside_width <= _EMPTY_BOX_SIZE or inside_height <= _EMPTY_BOX_SIZE:
        return "empty"
    if (x < -_OUTSIDE_TOLERANCE or y < -_OUTSIDE_TOLERANCE or right > image_width + _OUTSIDE_TOLERANCE
            or bottom > image_height + _OUTSIDE_TOLERANCE):
        return "outside"
    return None


def describe_box(box):
    """``annotation id 5 of image a.png (image_id 2)``: how messages name the annotation of ``box``."""
    return f"annotation id {box.annotation_id} of image {box.file_name} (image_id {box.image_id})"


def box_ref(annotation, image):
    return BoxRef(annotation["id"], annotation["image_id"], image["file_name"], annotation.get("bbox"),
                  (image["width"], image["height"]))


def is_ordinary_box(bbox, image):
    """Whether ``bbox`` is 4 numbers making a box of positive size entirely inside ``image``: the common case,
    tested with as little work as possible (a COCO-size json has 860,000 boxes); :mod:`.coco_json` looks at the
    others."""
    if type(bbox) is not list or len(bbox) != 4:
        return False
    x, y, width, height = bbox
    if type(x) not in _NUMBER_TYPES or type(y) not in _NUMBER_TYPES or type(width) not in _NUMBER_TYPES \
            or type(height) not in _NUMBER_TYPES:
        return False
    # NaN fails every comparison; infinity fails the last two (an image's size is a finite integer)
    return (0 <= x and 0 <= y and width > _EMPTY_BOX_SIZE and height > _EMPTY_BOX_SIZE
            and x + width <= image["width"] and y + height <= image["height"])
