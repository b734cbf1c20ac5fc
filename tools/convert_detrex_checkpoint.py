#!/usr/bin/env python
"""Converts an official detrex Focus-DETR checkpoint to this project's key layout.

    python tools/convert_detrex_checkpoint.py focus_detr_r50_4scale_12ep.pth converted.pth \
        [--config-file configs/focus_detr_r50_4scale_12ep.py]

Only the model weights are kept (no optimizer or trainer state). With ``--config-file`` the result is also loaded
strictly into that configuration's model, so a checkpoint that does not fit fails here rather than at training time.
``train.init_checkpoint`` accepts official checkpoints directly; converting once saves the renaming at every load.
"""
import argparse
import os
import sys

import torch
from detectron2.config import LazyConfig, instantiate

from focus_detr.checkpoint import FocusDETRCheckpointer, convert_official_state_dict, is_official_layout
from focus_detr.engine import atomic_write


def _parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="official detrex Focus-DETR checkpoint (.pth)")
    parser.add_argument("output", help="where to write the converted checkpoint")
    parser.add_argument("--config-file", help="verify the result against this configuration's model")
    return parser


def parse_args(argv=None):
    return _parser().parse_args(argv)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    if not os.path.isfile(args.input):
        parser.error(f"checkpoint not found: {args.input}")
    checkpoint = torch.load(args.input, map_location="cpu", weights_only=True)
    state_dict = checkpoint.get("model", checkpoint)
    if not is_official_layout(state_dict):
        parser.error(f"{args.input} is not in the official detrex Focus-DETR layout (already converted?)")
    converted = convert_official_state_dict(state_dict)
    if args.config_file:
        model = instantiate(LazyConfig.load(args.config_file).model)
        FocusDETRCheckpointer(model).load_model_state(converted)
    atomic_write(args.output, lambda f: torch.save({"model": converted}, f))
    print(f"wrote {args.output}: {len(converted)} tensors (from {len(state_dict)} official keys incl. aliases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
