"""Detections drawn so that many small objects stay readable: the demo's pictures and video frames, and the
ground-truth pictures of ``tools/visualize_data.py``.

A small image is first scaled up by a whole factor (its short edge to at least ``min_short_edge`` pixels), boxes are
thin lines coloured by score, and a legend strip under the image holds the count, the class and a colour bar of the
score scale, instead of a label box on every object (on 416-px tree tiles those covered the crowns). Only a model of
several classes writes a class name at each box, in small type. The score scale is fixed (the threshold to 1), so the
frames of a video and pictures of one model compare.
"""
import math
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["SCORE_COLORS", "draw_detections", "draw_ground_truth", "score_colors", "upscale_factor"]

# Anchors of the score colour scale (BGR) from the threshold to 1: cyan, violet, magenta, orange, yellow. Bright at
# every score, and unlike green, brown or grey, none of them is the colour of vegetation, roads or shadows.
SCORE_COLORS = np.array([(255, 255, 0), (255, 128, 128), (255, 0, 255), (0, 128, 255), (0, 255, 255)], np.float64)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_LEGEND_BACKGROUND = (40, 40, 40)
_TEXT_COLOR = (235, 235, 235)
_MIN_LEGEND_WIDTH = 420  # below this width the legend's text would not fit: the strip is wider than the image
_GROUND_TRUTH_COLOR = (40, 40, 255)  # red: unlike green, not the colour of vegetation, and none of the score colours
_FAR = 2**20  # pixels: box coordinates beyond this are drawn here, out of sight
_CROWD_COLOR = (160, 160, 160)  # crowd boxes: neither matched nor counted as missed by COCO evaluation


def upscale_factor(height: int, width: int, min_short_edge: int = 720, max_long_edge: int = 2000) -> int:
    """The whole factor (>= 1) that brings the short edge to at least ``min_short_edge`` pixels, lowered until the
    long edge stays within ``max_long_edge``."""
    factor = max(1, math.ceil(min_short_edge / max(1, min(height, width))))
    while factor > 1 and factor * max(height, width) > max_long_edge:
        factor -= 1
    return factor


def score_colors(scores: np.ndarray, low: float, high: float = 1.0) -> np.ndarray:
    """Scores ``(N,)`` -> BGR colours ``(N, 3)`` uint8 along :data:`SCORE_COLORS`, ``low`` to ``high``."""
    span = max(high - low, 1e-6)
    t = np.clip((np.asarray(scores, np.float64) - low) / span, 0.0, 1.0) * (len(SCORE_COLORS) - 1)
    lower = np.minimum(np.floor(t).astype(int), len(SCORE_COLORS) - 2)
    fraction = (t - lower)[:, None]
    colors = SCORE_COLORS[lower] * (1 - fraction) + SCORE_COLORS[lower + 1] * fraction
    return np.round(colors).astype(np.uint8)


def _text(canvas, text, origin, scale, color, thickness=1):
    cv2.putText(canvas, text, origin, _FONT, scale, color, thickness, cv2.LINE_AA)


def _legend(width: int, scores: np.ndarray, threshold: float, class_name: Optional[str]) -> np.ndarray:
    """The strip under the picture: "N <class> detections >= threshold" and the colour bar of the score scale with
    a dark mark at each drawn score (where the scores lie, at a glance)."""
    strip = _text_strip(width, f"{len(scores)} {class_name + ' ' if class_name else ''}detections with score >= "
                               f"{threshold:.2f}")
    height = strip.shape[0]
    scale, margin = height / 80.0, max(8, height // 5)
    # the colour bar on the right: its ends and middle labelled with their scores
    bar_left, bar_right = int(width * 0.62), width - 2 * margin
    bar_top, bar_bottom = margin // 2 + 2, margin // 2 + 2 + max(6, height // 6)
    steps = np.linspace(threshold, 1.0, bar_right - bar_left)
    strip[bar_top:bar_bottom, bar_left:bar_right] = score_colors(steps, threshold)[None]
    marks = bar_left + np.round((scores - threshold) / max(1.0 - threshold, 1e-6) * (bar_right - bar_left - 1))
    strip[bar_top:bar_bottom, np.clip(marks.astype(int), bar_left, bar_right - 1)] = 0
    _text(strip, "score", (bar_left - int(62 * scale * 1.4), bar_bottom), scale, _TEXT_COLOR)
    for value in (threshold, (threshold + 1.0) / 2, 1.0):
        x = bar_left + int(round((value - threshold) / max(1.0 - threshold, 1e-6) * (bar_right - bar_left - 1)))
        label = f"{value:.2f}"
        (label_width, _), _ = cv2.getTextSize(label, _FONT, scale * 0.9, 1)
        x_text = int(np.clip(x - label_width // 2, bar_left - margin, width - label_width - 2))
        cv2.line(strip, (x, bar_bottom), (x, bar_bottom + 3), _TEXT_COLOR, 1)
        _text(strip, label, (x_text, height - margin // 2 - 2), scale * 0.9, _TEXT_COLOR)
    return strip


def draw_detections(
    image_bgr: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
    threshold: float,
    min_short_edge: int = 720,
    max_long_edge: int = 2000,
) -> Tuple[np.ndarray, int]:
    """The detections with score >= ``threshold`` drawn on a copy of ``image_bgr``.

    Args:
        image_bgr: uint8 ``(H, W, 3)``.
        boxes: ``(N, 4)`` XYXY in the pixels of ``image_bgr``; scores ``(N,)``; classes ``(N,)`` int.
        class_names: name of each class index (an index without a name is written as its number).
        threshold: the lowest score drawn, also the low end of the colour scale.
        min_short_edge, max_long_edge: see :func:`upscale_factor`.

    Returns:
        (picture, count): the BGR picture ``(k H + legend, max(k W, 420), 3)`` for the factor ``k``, and the number
        of boxes drawn.
    """
    keep = np.asarray(scores) >= threshold
    boxes, scores, classes = np.asarray(boxes, np.float64)[keep], np.asarray(scores)[keep], np.asarray(classes)[keep]
    picture, factor, thickness = _canvas(image_bgr, min_short_edge, max_long_edge)
    order = np.argsort(scores, kind="stable")  # the highest scores drawn last, on top
    colors = [tuple(int(c) for c in color) for color in score_colors(scores[order], threshold)]
    _draw_boxes(picture, boxes[order] * factor, classes[order], colors, class_names, thickness)
    class_name = class_names[0] if len(class_names) == 1 else None
    return _with_legend(picture, lambda width: _legend(width, scores, threshold, class_name)), len(scores)


def draw_ground_truth(
    image_bgr: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
    crowd: Optional[np.ndarray] = None,
    min_short_edge: int = 720,
    max_long_edge: int = 2000,
) -> np.ndarray:
    """Ground-truth boxes drawn on a copy of ``image_bgr`` as :func:`draw_detections` draws detections (scaled up,
    thin lines, class names only for several classes), in red, crowd boxes in grey; the legend counts them.

    Args:
        image_bgr: uint8 ``(H, W, 3)``.
        boxes: ``(N, 4)`` XYXY in the pixels of ``image_bgr``; classes ``(N,)`` int; crowd ``(N,)`` bool or None.

    Returns:
        the BGR picture ``(k H + legend, max(k W, 420), 3)`` for the factor ``k`` of :func:`upscale_factor`.
    """
    boxes, classes = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(classes).reshape(-1)
    crowd = np.zeros(len(boxes), bool) if crowd is None else np.asarray(crowd, bool).reshape(-1)
    picture, factor, thickness = _canvas(image_bgr, min_short_edge, max_long_edge)
    colors = [_CROWD_COLOR if is_crowd else _GROUND_TRUTH_COLOR for is_crowd in crowd]
    _draw_boxes(picture, boxes * factor, classes, colors, class_names, thickness)
    what = f"{int((~crowd).sum())} {class_names[0] + ' ' if len(class_names) == 1 else ''}ground-truth boxes"
    what += f" (red), {int(crowd.sum())} crowd (grey)" if crowd.any() else ""
    what += f"; image {image_bgr.shape[1]}x{image_bgr.shape[0]}"
    return _with_legend(picture, lambda width: _text_strip(width, what))


def _canvas(image_bgr, min_short_edge, max_long_edge):
    """A copy of ``image_bgr`` scaled up by :func:`upscale_factor`, the factor and the line thickness for it."""
    factor = upscale_factor(*image_bgr.shape[:2], min_short_edge, max_long_edge)
    if factor == 1:
        picture = np.array(image_bgr, np.uint8, order="C")  # a copy: the caller's image stays as it is
    else:
        picture = cv2.resize(image_bgr, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    thickness = 1 if factor == 1 and max(picture.shape[:2]) < 1000 else 2
    return picture, factor, thickness


def _draw_boxes(picture, boxes, classes, colors, class_names, thickness):
    """Each box ``(N, 4)`` XYXY in ``picture``'s pixels in its colour, in order; its class name at it when there are
    several classes."""
    several_classes = len(class_names) != 1
    label_scale = 0.45 * max(1.0, picture.shape[1] / 1100)
    for box, label_index, color in zip(boxes, classes, colors):
        if not np.isfinite(box).all():
            continue
        # OpenCV takes 32-bit coordinates (a 3e9-pixel box was a traceback); that far out a side is out of sight
        x1, y1, x2, y2 = (int(round(v)) for v in np.clip(box, -_FAR, _FAR))
        cv2.rectangle(picture, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        if several_classes:
            label = class_names[label_index] if 0 <= label_index < len(class_names) else str(int(label_index))
            origin = (x1 + 2, max(y1 - 4, 12))
            _text(picture, label, origin, label_scale, (0, 0, 0), 3)
            _text(picture, label, origin, label_scale, color, 1)


def _with_legend(picture, legend_of_width):
    """``picture`` widened to the legend's minimum width, with ``legend_of_width(width)`` under it."""
    width = max(picture.shape[1], _MIN_LEGEND_WIDTH)
    if width > picture.shape[1]:
        picture = cv2.copyMakeBorder(picture, 0, 0, 0, width - picture.shape[1], cv2.BORDER_CONSTANT,
                                     value=_LEGEND_BACKGROUND)
    return np.concatenate([picture, legend_of_width(width)])


def _text_strip(width: int, text: str) -> np.ndarray:
    """A legend strip holding one line of text."""
    height = int(np.clip(round(width * 0.06), 44, 72))
    strip = np.full((height, width, 3), _LEGEND_BACKGROUND, np.uint8)
    _text(strip, text, (max(8, height // 5), int(height * 0.62)), height / 80.0, _TEXT_COLOR)
    return strip
