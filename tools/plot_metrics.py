#!/usr/bin/env python
"""Training curves of a run: total loss, the main loss components, the learning rate and the periodic COCO AP, read
from the run's ``metrics.json`` (detectron2's JSONWriter format) and drawn to one PNG.

    python tools/plot_metrics.py OUTPUT_DIR [--output PNG]

``OUTPUT_DIR`` is a training output folder (``train.output_dir``) or its ``metrics.json``; the PNG defaults to
``OUTPUT_DIR/training_curves.png``, and a folder given as ``--output`` gets that name in it. The extension of
``--output`` picks the format (.png, .svg, .pdf, ...); a name without one gets ``.png``, and a device
(``/dev/stdout``) is written as named, in PNG (the line saying so then goes to stderr). A run still writing its
last line is drawn up to the line before.

Example:
    python tools/plot_metrics.py output/main_job
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import os
import sys

from focus_detr.analysis.training_curves import is_device_path, metrics_path, plot_training_curves, read_metrics
from focus_detr.engine.cli import run_reporting_errors

DEFAULT_PNG = "training_curves.png"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="a training output folder, or its metrics.json")
    parser.add_argument("--output", metavar="PNG", default=None,
                        help=f"default: OUTPUT_DIR/{DEFAULT_PNG}; a folder gets {DEFAULT_PNG} in it; the extension "
                             "picks the format, a name without one gets .png, a device (/dev/null) is written as named")
    return parser.parse_args(argv)


def main(args):
    metrics = read_metrics(metrics_path(args.output_dir))
    if metrics.warning:
        print(f"warning: {metrics.warning}", file=sys.stderr)
    png = args.output or os.path.join(os.path.dirname(metrics.path), DEFAULT_PNG)
    device = is_device_path(png)
    if os.path.isdir(png):
        png = os.path.join(png, DEFAULT_PNG)
    elif not os.path.splitext(png)[1] and not device:
        png += ".png"  # so the name printed below is the file written (matplotlib adds it unseen)
    os.makedirs(os.path.dirname(png) or ".", exist_ok=True)
    plot_training_curves(metrics, png)
    # not into the picture when it goes to stdout
    print(f"wrote {png} ({len(metrics.records)} logged iterations, the last {metrics.records[-1]['iteration']})",
          file=sys.stderr if device else sys.stdout)
    return png


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, parse_args()))
