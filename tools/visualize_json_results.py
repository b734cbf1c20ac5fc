#!/usr/bin/env python
"""Draws the detections of a COCO results json beside the ground truth, image by image (named after detectron2's and
detrex's tools/visualize_json_results.py): what an evaluation scored, without running the model again.

    python tools/visualize_json_results.py --config-file CFG --input RESULTS.json --output-dir DIR
        [--conf-threshold 0.3] [--num 8] [key=value ...]

``--input`` is the ``coco_instances_results.json`` that ``train_net.py --eval-only`` (or a training's evaluation)
writes into ``train.output_dir``, or any file of that format, for the config's test set (``dataloader.test``, whose
json ids its ``category_id``\\ s are). For each test image, writes ``DIR/<image name>_results.png``: on the left its
detections with score >= ``--conf-threshold``, coloured by score as the demo draws them, on the right its ground
truth (red; crowd boxes grey). A results entry that is not a detection, or names a category the test set does not
have, is refused with one line naming it; results for images the test set does not have are counted in a warning
(none at all is an error: the file was written for another dataset). An image that cannot be read, or whose size is
not the dataset's, is named on stderr (``skipped <file>: <why>``) and the rest go on.

Example:
    python tools/visualize_json_results.py --config-file configs/focus_detr_r18_trees.py \\
        --input output/main_job/coco_instances_results.json --output-dir output/result_pictures
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import sys

import cv2
import numpy as np

from focus_detr.analysis.coco_results import ImageDetections, read_coco_results
from focus_detr.analysis.data_pictures import (
    annotation_samples,
    check_output_outside_data,
    loader_class_names,
    loader_dataset_names,
    loader_node,
    loader_records,
    picture_path,
)
from focus_detr.analysis.detection_drawing import draw_detections, draw_ground_truth
from focus_detr.engine import check_datasets_registered, check_output_dir, load_config
from focus_detr.engine.arguments import add_overrides_argument, parse_args_with_overrides, positive_int
from focus_detr.engine.cli import print_skipped, run_reporting_errors

NO_DETECTIONS = ImageDetections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
_GAP = 8  # pixels between the two pictures


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", required=True, metavar="RESULTS.json", help="a COCO results json")
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="folder of the pictures")
    parser.add_argument("--conf-threshold", type=float, default=0.3, help="lowest score drawn (default 0.3)")
    parser.add_argument("--num", type=positive_int, default=None, help="draw at most this many images (default: all)")
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two BGR pictures next to each other, the shorter one padded at the bottom."""
    height = max(left.shape[0], right.shape[0])
    padded = [cv2.copyMakeBorder(p, 0, height - p.shape[0], 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
              for p in (left, right)]
    return np.concatenate([padded[0], np.full((height, _GAP, 3), 255, np.uint8), padded[1]], axis=1)


def main(args):
    if not 0.0 <= args.conf_threshold <= 1.0:
        raise ValueError(f"--conf-threshold must be in [0, 1], got {args.conf_threshold}")
    cfg = load_config(args.config_file, args.opts)
    check_datasets_registered(loader_node(cfg, "test"))
    names = loader_dataset_names(cfg, "test")
    if len(names) != 1:  # image ids are per json: two sets' ids would match the wrong images
        raise ValueError(f"dataloader.test reads {len(names)} datasets {names}: a results file belongs to one test "
                         "set; name it with dataloader.test.dataset.names=NAME")
    records = loader_records(cfg, "test")  # loads the test set: its category-id mapping is then known
    check_output_outside_data(args.output_dir, records)
    class_names = loader_class_names(cfg, "test")
    detections = read_coco_results(args.input, names[0])
    # ids may be integers or strings (as the dataset's json has them): sorted as text
    unknown = sorted(set(detections) - {record.get("image_id", None) for record in records}, key=str)
    if detections and len(unknown) == len(detections):
        raise ValueError(f"no result of {args.input} is for an image of the test set {names} (image ids such as "
                         f"{unknown[:3]}): were these results written for another dataset?")
    if not detections:  # a model that detected nothing, or another file: every picture's left half is empty
        print(f"warning: {args.input} holds no detection: the pictures show the ground truth alone", file=sys.stderr)
    if unknown:
        print(f"warning: {len(unknown)} of the {len(detections)} images in {args.input} are not in the test set "
              f"{names} (image ids such as {unknown[:3]}); their detections are not drawn", file=sys.stderr)
    check_output_dir(args.output_dir, key="--output-dir")  # made now, after the checks of the data
    stems, written = {}, []
    for sample in annotation_samples(records, print_skipped):
        if args.num is not None and len(written) >= args.num:
            break
        found = detections.get(sample.image_id, NO_DETECTIONS)
        left, _ = draw_detections(sample.image_bgr, found.boxes, found.scores, found.classes, class_names,
                                  args.conf_threshold)
        right = draw_ground_truth(sample.image_bgr, sample.boxes, sample.classes, class_names, sample.crowd)
        path = picture_path(args.output_dir, sample.file_name, "_results.png", stems)
        if not cv2.imwrite(path, side_by_side(left, right)):
            raise OSError(f"cannot write {path}")
        written.append(path)
    if not written:
        raise ValueError("no picture written: no image of the test set could be read (each is named above)")
    print(f"wrote {len(written)} pictures to {args.output_dir}")
    return written


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, parse_args()))
