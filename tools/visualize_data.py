#!/usr/bin/env python
"""Draws what a config's model learns from (named after detectron2's and detrex's tools/visualize_data.py), to check
a dataset and its augmentation before training on it.

    python tools/visualize_data.py --config-file CFG --source annotation --output-dir DIR [--split test] [--num 8]
        [key=value ...]
    python tools/visualize_data.py --config-file CFG --source dataloader --output-dir DIR [--num 8] [key=value ...]

``--source annotation``: each image of the loader's dataset (``dataloader.train``, or ``dataloader.test`` with
``--split test``) as that loader reads it (the dataset checks and its ``filter_empty`` applied), with its
ground-truth boxes in red and crowd boxes in grey; writes ``DIR/<image name>_annotations.png``.
``--source dataloader``: the first ``--num`` images (default 20) the training loader gives the model, after its
augmentation (flips, resizes, crops), with the boxes the loss is given (crowd boxes and boxes cropped away removed);
writes ``DIR/<image name>_loader<k>.png`` (k counts the times an image came up). Small images are scaled up by a whole
factor, as the demo's pictures are; the legend under each counts its boxes and gives the image's size. Class names
are written at the boxes when there are several classes.

With ``--source annotation`` an image that cannot be read, or whose size is not the dataset's, is named on stderr
(``skipped <file>: <why>``) and the rest go on; the training loader stops at one with a one-line error, as training
would. The exit status is 0 when at least one picture was written.

Example:
    python tools/visualize_data.py --config-file configs/focus_detr_r18_trees.py --source dataloader \\
        --output-dir output/data_pictures --num 8
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import sys

import cv2

from focus_detr.analysis.data_pictures import (
    SOURCES,
    annotation_samples,
    check_output_outside_data,
    loader_class_names,
    loader_node,
    loader_records,
    loader_samples,
    picture_path,
)
from focus_detr.analysis.detection_drawing import draw_ground_truth
from focus_detr.engine import check_datasets_registered, check_output_dir, load_config
from focus_detr.engine.arguments import add_overrides_argument, parse_args_with_overrides, positive_int
from focus_detr.engine.cli import print_skipped, run_reporting_errors

DEFAULT_LOADER_IMAGES = 20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--source", required=True, choices=SOURCES,
                        help="annotation: the dataset's images and boxes; dataloader: the training loader's output")
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="folder of the pictures")
    parser.add_argument("--split", choices=("train", "test"), default="train",
                        help="which loader's dataset --source annotation draws (default: train)")
    parser.add_argument("--num", type=positive_int, default=None,
                        help=f"draw at most this many images (default: all for annotation, {DEFAULT_LOADER_IMAGES} "
                             "for dataloader)")
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


def main(args):
    if args.source == "dataloader" and args.split != "train":
        raise ValueError("--source dataloader draws the training loader's output (the test loader gives no ground "
                         "truth to the model); for the test set use --source annotation --split test")
    cfg = load_config(args.config_file, args.opts)
    check_datasets_registered(loader_node(cfg, args.split))
    records = loader_records(cfg, args.split)  # loaded once: this sets the classes' names, the loader takes it
    class_names = loader_class_names(cfg, args.split)
    check_output_outside_data(args.output_dir, records)
    if args.source == "annotation":
        samples = annotation_samples(records, print_skipped)
    else:
        samples = loader_samples(cfg, args.num or DEFAULT_LOADER_IMAGES, records)
    check_output_dir(args.output_dir, key="--output-dir")  # made now, after the checks of the data
    stems, occurrences, written = {}, {}, []
    for sample in samples:
        if args.source == "annotation":
            suffix = "_annotations.png"
        else:
            occurrences[sample.file_name] = occurrences.get(sample.file_name, 0) + 1
            suffix = f"_loader{occurrences[sample.file_name]}.png"
        path = picture_path(args.output_dir, sample.file_name, suffix, stems)
        picture = draw_ground_truth(sample.image_bgr, sample.boxes, sample.classes, class_names, sample.crowd)
        if not cv2.imwrite(path, picture):
            raise OSError(f"cannot write {path}")
        written.append(path)
        if args.num is not None and len(written) >= args.num:
            break
    if not written:
        raise ValueError(f"no picture written: no image of the {args.split} data could be read (each is named above)")
    print(f"wrote {len(written)} pictures to {args.output_dir}")
    return written


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, parse_args()))
