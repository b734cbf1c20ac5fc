#!/usr/bin/env python
"""Converts an official detrex Focus-DETR checkpoint to this project's key layout.

    python tools/convert_detrex_checkpoint.py focus_detr_r50_4scale_12ep.pth converted.pth \
        [--config-file configs/focus_detr_r50_4scale_12ep.py]

Only the model weights are kept (no optimizer or trainer state). The output's extension chooses its format:
``.safetensors`` writes a safetensors file (tensors only: no reader runs code from it), anything else a torch file
``{"model": weights}``; the input may be either (or any format ``train.init_checkpoint`` reads). With
``--config-file`` the result is also loaded strictly into that configuration's model, so a checkpoint that does not
fit fails here rather than at training time. ``train.init_checkpoint`` accepts official checkpoints directly;
converting once saves the renaming at every load.
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import os
import sys

from detectron2.config import instantiate

from focus_detr.checkpoint import FocusDETRCheckpointer, convert_official_state_dict, is_official_layout, read_weights_file
from focus_detr.engine import load_config
from focus_detr.engine.checkpoint import save_weights
from focus_detr.engine.cli import run_reporting_errors


def _parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="official detrex Focus-DETR checkpoint (.pth, .safetensors, ...)")
    parser.add_argument("output", help="where to write the converted weights (.safetensors: safetensors, else torch)")
    parser.add_argument("--config-file", help="verify the result against this configuration's model")
    return parser


def parse_args(argv=None):
    return _parser().parse_args(argv)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    if os.path.exists(args.output) and os.path.exists(args.input) and os.path.samefile(args.input, args.output):
        parser.error(f"the output {args.output} is the input file: write the converted weights to another file (the "
                     "official checkpoint stays as it is)")
    loaded = read_weights_file(args.input)  # runs no code from the file, whatever its format
    checkpoint = loaded.content
    flat = loaded.format == "safetensors" or not isinstance(checkpoint, dict)
    state_dict = checkpoint if flat else checkpoint.get("model", checkpoint)
    if not isinstance(state_dict, dict):
        raise ValueError(f"cannot use checkpoint {args.input}: it holds a {type(state_dict).__name__}, not a dict of tensors")
    if not is_official_layout(state_dict):
        parser.error(f"{args.input} is not in the official detrex Focus-DETR layout (already converted?)")
    converted = convert_official_state_dict(state_dict)
    if args.config_file:
        model = instantiate(load_config(args.config_file).model)
        FocusDETRCheckpointer(model).load_model_state(converted, source=args.input)
    save_weights(args.output, converted)
    print(f"wrote {args.output}: {len(converted)} tensors (from {len(state_dict)} official keys incl. aliases)")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
