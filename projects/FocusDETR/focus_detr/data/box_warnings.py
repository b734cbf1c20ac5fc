"""Warnings about datasets that are legal but rarely meant: boxes training drops or clips while the COCO evaluator
scores them as written, categories sharing a name, coordinates in fractions of the image, areas that do not fit
their box. Counted by the json check (:mod:`.coco_json`) or, for datasets registered in code, over the loaded records
(:func:`box_report_of_records`)."""
import logging
import math
import numbers

from detectron2.structures import BoxMode

from .coco_boxes import BoxRef, BoxTally, box_fit, describe_box
from .coco_fields import AREA_FIX
from .coco_json import PIXEL_IMAGE_SIDE, SUB_PIXEL_SIDE, CocoJsonReport

__all__ = ["box_example", "box_report_of_records", "count_of_annotations", "warn_about_legal_surprises"]

logger = logging.getLogger(__name__)


def _count_of_boxes(count):
    return f"{count} box{'es' if count != 1 else ''}"


def box_example(box):
    width, height = box.image_size
    return f"e.g. {describe_box(box)}, bbox {box.bbox} in a {width} x {height} image"


def _warn_about_sub_pixel_boxes(where, boxes):
    if boxes.count:
        logger.warning(
            f"{where}: every box is smaller than {SUB_PIXEL_SIDE} pixels on both sides "
            f"({_count_of_boxes(boxes.count)}, {box_example(boxes.example)}): a COCO bbox is [x, y, width, height] "
            "in pixels, not in fractions of the image (0..1); multiply x and width by the image's width, y and height "
            "by its height"
        )


def warn_about_legal_surprises(name, json_file, report):
    """Warns once per dataset and json version about what is legal but rarely meant: boxes training drops or clips
    while the COCO evaluator scores them as written (real datasets have a few, each costs recall or IoU),
    categories sharing a name, and boxes that are all under a pixel and a half (coordinates in 0..1)."""
    if name in report.warned_datasets:
        return
    report.warned_datasets.add(name)
    where = f"dataset {name!r} ({json_file})"
    empty, outside = report.empty_boxes, report.outside_boxes
    if empty.count:
        logger.warning(
            f"{where}: {_count_of_boxes(empty.count)} with no area inside the image (zero width or height, or "
            f"outside it), {box_example(empty.example)}: training ignores such boxes, but the COCO evaluator counts "
            "each as an object to find, which lowers recall and AP; fix or remove them"
        )
    if outside.count:
        logger.warning(
            f"{where}: {_count_of_boxes(outside.count)} reaching more than 1 pixel outside the image, "
            f"{box_example(outside.example)}: training clips such boxes to the image, but the COCO evaluator scores "
            "them as written, so even a perfect detection of the visible part matches them with a lower IoU"
            + (report.boxes_read_as_corners and "; every box of the json, read as corners [x1, y1, x2, y2], lies "
               "inside its image: if they are corners (as in Pascal VOC), write them as COCO's [x, y, width, "
               "height], width = x2 - x1 and height = y2 - y1" or "")
        )
    for class_name, ids in report.shared_names.items():
        listed = f"{', '.join(map(str, ids[:-1]))} and {ids[-1]} are {'both' if len(ids) == 2 else 'all'}"
        logger.warning(
            f"{where}: categories {listed} named {class_name!r}: the model learns them as {len(ids)} classes, which "
            "evaluation tables and drawn detections show under one name; merge them into one category or rename them"
        )
    _warn_about_sub_pixel_boxes(where, report.sub_pixel_boxes)
    misfit = report.misfit_area
    if misfit.count:
        logger.warning(
            f"{where}: {count_of_annotations(misfit.count)} whose area does not fit the box (0 for a box of positive "
            f"size, or larger than the box), {box_example(misfit.example)}: COCO evaluation sorts objects into small "
            f"/ medium / large by their area, so APs / APm / APl count them as another size; {AREA_FIX}"
        )


def count_of_annotations(count):
    return f"{count} annotation{'s' if count != 1 else ''}"


def box_report_of_records(dataset_dicts):
    """The json check's counts of boxes training drops or clips, and of coordinates in fractions of the image, over
    loaded records (of datasets registered in code, which have no json to check): absolute boxes of non-crowd
    annotations in records that give their image's size. One pass, a few operations per box (COCO's 860,000 boxes
    built in code took 2.5 s on a busy 2-core machine)."""
    report, boxes, first = CocoJsonReport(), 0, None
    all_sub_pixel, smallest_side = True, math.inf

    def box_ref(record, index, bbox, width, height):
        return BoxRef(f"#{index} (0-based)", record.get("image_id"), record.get("file_name"),
                      [value.item() if hasattr(value, "item") else value for value in bbox], (int(width), int(height)))

    for record in dataset_dicts:
        width, height = record.get("width"), record.get("height")
        if not (isinstance(width, numbers.Integral) and isinstance(height, numbers.Integral)):
            continue
        image = {"width": width, "height": height}
        smallest_side = min(smallest_side, width, height)
        for index, annotation in enumerate(record.get("annotations") or ()):
            mode, bbox = annotation.get("bbox_mode"), annotation.get("bbox")
            if annotation.get("iscrowd", 0) or mode not in (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS):
                continue
            try:  # a list, a tuple, an array (numpy values): any 4 real numbers
                x, y, a, b = (float(value) for value in bbox)
            except (TypeError, ValueError):
                continue
            xywh = [x, y, a - x, b - y] if mode == BoxMode.XYXY_ABS else [x, y, a, b]
            fit = box_fit(xywh, image)
            if fit is not None:
                tally = report.empty_boxes if fit == "empty" else report.outside_boxes
                tally.count += 1
                tally.example = tally.example or box_ref(record, index, bbox, width, height)
            boxes += 1
            first = first or box_ref(record, index, bbox, width, height)
            all_sub_pixel = all_sub_pixel and xywh[2] < SUB_PIXEL_SIDE and xywh[3] < SUB_PIXEL_SIDE
    if boxes and all_sub_pixel and smallest_side >= PIXEL_IMAGE_SIDE:  # tiny images may hold tiny boxes
        report.sub_pixel_boxes = BoxTally(boxes, first)
    return report
