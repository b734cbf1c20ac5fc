#!/usr/bin/env python
"""Draw Focus-DETR's detections on images, and with ``--show-tokens`` what its encoder looked at.

``--input`` takes image files and folders (a folder stands for its files, sorted by name). Every image that can be
read is drawn; every other file (not an image, empty, truncated, unreadable, a subfolder) is named on stderr with why,
``skipped <file>: <why>``, and the rest go on. The exit status is 0 when at least one image was drawn, else 2.

For each input image, writes to ``--output``:
  <name>_detections.png   boxes with scores (detectron2 Visualizer), above ``--confidence-threshold``
  <name>_foreground.png   (--show-tokens) per feature level, the foreground token selector's probabilities
  <name>_tokens.png       (--show-tokens) per encoder layer x level: kept tokens (blue) and fine-grained tokens (red)
<name> is the file name without its extension, with "-2", "-3", ... added when two inputs share it.

Images are resized like the config's test loader (the network input); pictures are drawn on the original image.
With ``--onnx DIR/model.onnx`` (written by tools/export_model.py) onnxruntime runs the exported graph instead of
PyTorch; the config then only gives the resize and the class names (``--show-tokens`` needs the PyTorch model).

Example:
    python demo/demo.py --config-file configs/focus_detr_r18_trees.py --input datasets/trees/images/val/*.png \
        --output output/demo --show-tokens --opts train.init_checkpoint=output/focus_detr_r18_trees/model_final.pth
    python demo/demo.py --config-file configs/focus_detr_r18_trees.py --input datasets/trees/images/val/*.png \
        --output output/demo_onnx --onnx output/onnx_trees/model.onnx
"""
import argparse
import os
import sys

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.utils.visualizer import Visualizer

from focus_detr.analysis.token_maps import save_foreground_figure, save_token_figure
from focus_detr.data import image_files, read_image
from focus_detr.engine import (
    AtomicDetectionCheckpointer,
    amp_autocast,
    build_model,
    inference_amp_dtype,
    load_config,
    resolve_device,
)
from focus_detr.engine.arguments import parse_args_with_overrides
from focus_detr.engine.cli import run_reporting_errors
from focus_detr.export import OnnxPredictor


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH", help="image files and folders of images")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--show-tokens", action="store_true", help="also draw the token selection")
    parser.add_argument("--confidence-threshold", type=float, default=0.3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--onnx", metavar="MODEL.onnx", help="run this exported graph with onnxruntime (CPU)")
    # "--opts" is optional: overrides are recognised anywhere (it must not swallow the options after it)
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides key=value")
    return parse_args_with_overrides(parser, argv)


def _test_resize(cfg):
    """The test loader's augmentation (a ResizeShortestEdge for DETR configs), else 800 / 1333."""
    try:
        return T.AugmentationList([instantiate(a) for a in cfg.dataloader.test.mapper.augmentation])
    except (AttributeError, KeyError):
        return T.AugmentationList([T.ResizeShortestEdge(800, 1333)])


def _metadata(cfg):
    try:
        names = cfg.dataloader.test.dataset.names
        return MetadataCatalog.get(names if isinstance(names, str) else names[0])
    except (AttributeError, KeyError):
        return MetadataCatalog.get("__unused")


def _model_input(image_rgb, resize):
    aug_input = T.AugInput(image_rgb)
    resize(aug_input)
    resized = aug_input.image
    return {"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))),
            "height": image_rgb.shape[0], "width": image_rgb.shape[1]}, resized


def _pytorch_predictor(cfg, device, show_tokens):
    amp_dtype = inference_amp_dtype(cfg, device)  # train.inference_amp: bfloat16 autocast when enabled
    model = build_model(cfg, device)
    init_checkpoint = (cfg.get("train", None) or {}).get("init_checkpoint", "")
    if init_checkpoint:
        AtomicDetectionCheckpointer(model).load(init_checkpoint)
    else:
        print("warning: train.init_checkpoint is empty: drawing a randomly initialised model", file=sys.stderr)
    model.eval()

    @torch.no_grad()
    def predict(model_input):
        with amp_autocast(device, amp_dtype):
            if show_tokens:
                return model.forward_inference([model_input], return_token_selection=True)[0]
            return model([model_input])[0]

    return predict


def draw_detections(image_rgb, instances, metadata, threshold, path):
    instances = instances.to("cpu")
    instances = instances[instances.scores >= threshold]
    visualizer = Visualizer(image_rgb, metadata=metadata)
    visualizer.draw_instance_predictions(instances).save(path)
    return len(instances)


def _skip(path, why):
    print(f"skipped {path}: {why}", file=sys.stderr)


def _read_or_skip(path):
    """The RGB pixels of ``path``, or None after naming it on stderr when they cannot be read (e.g. truncated)."""
    try:
        return read_image(path, "RGB")
    except (OSError, ValueError) as error:
        prefix = f"cannot read image {path}: "
        _skip(path, str(error)[len(prefix):] if str(error).startswith(prefix) else str(error))
        return None


def _unique_name(path, taken):
    """The file name of ``path`` without extension, made unique among ``taken`` (then added to it) so that two inputs
    never overwrite each other's pictures."""
    stem = os.path.splitext(os.path.basename(path))[0]
    name, number = stem, 1
    while name in taken:
        number += 1
        name = f"{stem}-{number}"
    taken.add(name)
    return name


def main(args):
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise ValueError(f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}")
    if args.onnx and args.show_tokens:
        raise ValueError("--show-tokens draws the PyTorch model's token selection; it cannot be used with --onnx")
    paths, skipped = image_files(args.input)  # headers only: the model is not built when nothing is an image
    for path, why in skipped:
        _skip(path, why)
    if not paths:
        raise ValueError(f"no image to draw: all {len(skipped)} inputs were skipped (each is named above)")
    cfg = load_config(args.config_file, args.opts)
    if args.onnx:
        if inference_amp_dtype(cfg, "cpu") is not None:
            raise ValueError("train.inference_amp autocasts the PyTorch model; the --onnx graph runs in float32")
        device, onnx_predictor = "cpu", OnnxPredictor(args.onnx)

        def predictor(item):
            return {"instances": onnx_predictor(item["image"], item["height"], item["width"])}

    else:
        device = resolve_device(args.device)
        predictor = _pytorch_predictor(cfg, device, args.show_tokens)
    os.makedirs(args.output, exist_ok=True)
    resize, metadata = _test_resize(cfg), _metadata(cfg)
    written, names = [], set()
    for path in paths:
        image_rgb = _read_or_skip(path)
        if image_rgb is None:
            continue
        name = _unique_name(path, names)
        model_input, resized = _model_input(image_rgb, resize)
        model_input["image"] = model_input["image"].to(device)
        output = predictor(model_input)
        detection_png = os.path.join(args.output, f"{name}_detections.png")
        count = draw_detections(image_rgb, output["instances"], metadata, args.confidence_threshold, detection_png)
        written.append(detection_png)
        print(f"{path}: {count} detections >= {args.confidence_threshold} -> {detection_png}")
        if args.show_tokens:
            height, width = output["image_size"]
            network_image = resized[:height, :width]
            foreground_png = os.path.join(args.output, f"{name}_foreground.png")
            tokens_png = os.path.join(args.output, f"{name}_tokens.png")
            save_foreground_figure(network_image, output["token_selection"], foreground_png)
            save_token_figure(network_image, output["token_selection"], tokens_png)
            written += [foreground_png, tokens_png]
            print(f"  token pictures -> {foreground_png}, {tokens_png}")
    if not names:
        raise ValueError(f"no image drawn: none of the {len(paths)} image files could be read (each is named above)")
    return written


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, parse_args()))
