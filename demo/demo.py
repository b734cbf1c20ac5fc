#!/usr/bin/env python
"""Draw Focus-DETR's detections on images or a video, and with ``--show-tokens`` what its encoder looked at.

``--input`` takes image files, folders (a folder stands for its files, sorted by name) and glob patterns (quoted,
``'datasets/trees/images/val/*.png'``: expanded here, sorted; one that matches nothing is an error). Every image
that can be read is drawn; every other file (not an image, empty, truncated, unreadable, a subfolder, an image the
model cannot take such as 1x1100 pixels) is named on stderr with why, ``skipped <file>: <why>``, and the rest go on.
The exit status is 0 when at least one image was drawn, else 2. An ``--output`` where a picture would overwrite an
input image is refused before anything runs.

For each input image, writes to the folder ``--output``:
  <name>_detections.png   boxes above ``--confidence-threshold``, coloured by score (colour bar in the legend)
  <name>_foreground.png   (--show-tokens) per feature level, the foreground token selector's probabilities
  <name>_tokens.png       (--show-tokens) per encoder layer x level: kept tokens (blue) and fine-grained tokens (red)
<name> is the file name without its extension, with "-2", "-3", ... added when two inputs share it.

``--video-input FILE`` writes the annotated video to ``--output`` (a ``.mp4`` / ``.avi`` file, or a folder for
``<name>_detections.mp4``) with the input's frame count and frame rate, shows a progress bar and prints the frames
per second measured over the whole loop (decoding, prediction, drawing, encoding).

Images are resized like the config's test loader (the network input); pictures are drawn on the original image,
small ones scaled up by a whole factor (short edge >= 720 px) so that thin boxes stay visible.
With ``--onnx DIR/model.onnx`` (written by tools/export_model.py) onnxruntime runs the exported graph instead of
PyTorch, for images and video; the config then only gives the resize and the class names (``--show-tokens`` needs
the PyTorch model), and a config whose input format or number of classes differs from the graph's model.json is
refused (a graph without model.json runs after a warning). The graph carries its weights: when model.json says it was
exported from random weights, or from another file than a ``train.init_checkpoint`` given here, a warning says so.

Example:
    python demo/demo.py --config-file configs/focus_detr_r18_trees.py --input 'datasets/trees/images/val/*.png' \
        --output output/demo --show-tokens --opts train.init_checkpoint=output/focus_detr_r18_trees/model_final.pth
    python demo/demo.py --config-file configs/focus_detr_r18_trees.py --video-input drone.mp4 \
        --output output/demo/drone.mp4 --opts train.init_checkpoint=output/focus_detr_r18_trees/model_final.pth
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import contextlib
import os
import sys
import time

import cv2
from tqdm import tqdm

from focus_detr.analysis.detection_drawing import draw_detections
from focus_detr.analysis.token_maps import save_foreground_figure, save_token_figure
from focus_detr.data import expand_globs, image_files, open_image
from focus_detr.data.image_io import dark_image_warning
from focus_detr.data.video_io import VIDEO_CODECS, VideoWriter, check_frame_rate, open_video, read_frames
from focus_detr.engine import FocusDETRPredictor, inference_amp_dtype, load_config, resolve_device
from focus_detr.engine.arguments import parse_args_with_overrides
from focus_detr.engine.cli import print_skipped, run_reporting_errors
from focus_detr.engine.inference_weights import ema_settings
from focus_detr.engine.predictor import inference_resize, input_format, model_input, resize_scale
from focus_detr.engine.settings import check_output_dir, nearest_existing
from focus_detr.engine.checkpoint_classes import model_classes
from focus_detr.layers.ms_deform_attn_backends import check_backend_setting
from focus_detr.export import OnnxPredictor, check_graph_fits_config, graph_weights


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH", help="image files, folders of images, glob patterns")
    source.add_argument("--video-input", metavar="FILE", help="a video file to annotate")
    parser.add_argument("--output", required=True, metavar="PATH",
                        help="folder of the pictures; for --video-input a .mp4 / .avi file or a folder")
    parser.add_argument("--show-tokens", action="store_true", help="also draw the token selection (images only)")
    parser.add_argument("--confidence-threshold", type=float, default=0.3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="on a GPU, replay the network from a CUDA graph per frame size (same detections, faster)")
    parser.add_argument("--onnx", metavar="MODEL.onnx", help="run this exported graph with onnxruntime (CPU)")
    # "--opts" is optional: overrides are recognised anywhere (it must not swallow the options after it)
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides key=value")
    return parse_args_with_overrides(parser, argv)


def _class_names(cfg, trained=None, weights="", kind="checkpoint"):
    """The model's class names for the labels (:func:`~focus_detr.engine.checkpoint_classes.model_classes`); []
    (boxes labelled with class numbers) when unknown, with a warning when its dataset cannot be read. ``trained``:
    the class names the weights file ``weights`` records (None: none), or ``kind="graph"``, the --onnx graph's
    model.json; they name the labels when the config's dataset cannot; a test set that names them otherwise is
    refused (a ValueError): its names would label the model's classes as others."""
    classes = model_classes(cfg, trained, weights, "the demo would label the model's classes", kind)
    if classes.names is None and classes.error is not None:
        print(f"warning: no class names for the labels, boxes are numbered by class instead: {classes.error}",
              file=sys.stderr)
    return classes.names or []


def _onnx_predictor(cfg, path):
    """BGR image -> {"instances"} from the exported graph, prepared as the PyTorch predictor prepares it; and the
    class names its model.json records (None: none)."""
    if inference_amp_dtype(cfg, "cpu") is not None:
        raise ValueError("train.inference_amp autocasts the PyTorch model; the --onnx graph runs in float32")
    onnx, resize, fmt = OnnxPredictor(path), inference_resize(cfg), input_format(cfg)
    unchecked = check_graph_fits_config(cfg, onnx)  # a mismatch is refused there: it would find other objects
    if unchecked:
        print(f"warning: {unchecked}; it is fed {fmt} images and its labels are named as in the config",
              file=sys.stderr)
    # the graph carries its weights: a train.init_checkpoint given with --onnx is not what runs
    init_checkpoint = (cfg.get("train", None) or {}).get("init_checkpoint", "")
    random_weights = onnx.model_json.get("init_checkpoint") == ""
    # without the EMA asked for, PyTorch would run the file's trained weights (asked for, it runs the average only
    # when the file holds one, which is not read here)
    ema_enabled, _, ema_for_eval = ema_settings(cfg)
    weights = None if ema_enabled and ema_for_eval else "trained"
    exported_from = graph_weights(onnx, init_checkpoint, weights) or ("random weights" if random_weights else None)
    if random_weights or (exported_from and init_checkpoint):
        named = f", not from train.init_checkpoint {init_checkpoint!r}" if init_checkpoint else ""
        if exported_from.startswith("the EMA weights"):
            named = f", not from the trained weights that train.init_checkpoint {init_checkpoint!r} gives this config"
        print(f"warning: {path} was exported from {exported_from} (its model.json){named}: its detections are that "
              "model's", file=sys.stderr)

    def predict(image_bgr):
        item = model_input(image_bgr, resize, fmt)
        return {"instances": onnx(item["image"], item["height"], item["width"])}

    return predict, onnx.metadata.get("thing_classes", None)


def _draw(image_bgr, instances, class_names, threshold):
    instances = instances.to("cpu")
    return draw_detections(image_bgr, instances.pred_boxes.tensor.numpy(), instances.scores.numpy(),
                           instances.pred_classes.numpy(), class_names, threshold)


def _read_or_skip(path):
    """The BGR pixels of ``path``, or None after naming it on stderr when they cannot be read (e.g. truncated); an
    animated image is drawn from its first frame, which is said."""
    try:
        image = open_image(path, "BGR")
    except (OSError, ValueError) as error:
        prefix = f"cannot read image {path}: "
        print_skipped(path, str(error)[len(prefix):] if str(error).startswith(prefix) else str(error))
        return None
    if image.frames > 1:
        print(f"note: {path} is animated ({image.frames} frames): its first frame is drawn (--video-input draws "
              "every frame)", file=sys.stderr)
    dark = dark_image_warning(path, image.bits_used)
    if dark is not None:
        print(f"note: {dark}", file=sys.stderr)
    return image.pixels


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


def _save_png(path, picture):
    """Writes ``picture`` as PNG to ``path``; OSError with the reason (cv2.imwrite only says that it failed)."""
    ok, encoded = cv2.imencode(".png", picture)
    if not ok:
        raise OSError(f"cannot write {path}: OpenCV cannot encode a {picture.shape} picture as PNG")
    try:
        picture_file = open(path, "wb")
    except OSError as error:  # nothing written: a file that was there stays
        raise OSError(f"cannot write {path}: {error.strerror}") from None
    try:
        with picture_file:
            picture_file.write(encoded.tobytes())
    except OSError as error:
        with contextlib.suppress(OSError):  # a picture cut short (a full disk) is no picture: not left under its name
            os.remove(path)
        raise OSError(f"cannot write {path}: {error.strerror}") from None


def _token_pictures(predictor, image_bgr, name, output):
    """The foreground and token pictures of ``image_bgr`` (drawn on the network input) and its detections."""
    item = predictor.prepare(image_bgr)
    result = predictor.run([item], return_token_selection=True)[0]
    network_image = item["image"].permute(1, 2, 0).numpy()
    if predictor.input_format == "BGR":
        network_image = network_image[:, :, ::-1]
    height, width = result["image_size"]
    paths = [os.path.join(output, f"{name}_foreground.png"), os.path.join(output, f"{name}_tokens.png")]
    strides = result["level_strides"]  # the model's (a neck reading other backbone levels has other ones)
    padded = result["padded_size"]  # the batch the tokens were computed on: their cells divide it
    save_foreground_figure(network_image[:height, :width], result["token_selection"], paths[0], strides, padded)
    save_token_figure(network_image[:height, :width], result["token_selection"], paths[1], strides, padded)
    return result, paths


def image_paths(inputs):
    """The image files among ``inputs`` (files, folders, glob patterns), each other file named on stderr with why,
    and those others; ValueError when no image is left. Reads headers only, so the model is not built for inputs
    without an image."""
    paths, skipped = image_files(expand_globs(inputs))
    for path, why in skipped:
        print_skipped(path, why)
    if not paths:
        raise ValueError(f"no image to draw: all {len(skipped)} inputs were skipped (each is named above)")
    return paths, [path for path, _ in skipped]


def picture_names(paths):
    """The name of each input's pictures (``<name>_detections.png``, ...): its file name without extension, made
    unique so that two inputs never overwrite each other's pictures."""
    taken = set()
    return [_unique_name(path, taken) for path in paths]


def check_image_output(output, paths, show_tokens, skipped=()):
    """ValueError when ``output`` is an existing file (the pictures of image inputs go into a folder; makedirs would
    only say "File exists"), or when a picture would be written over one of the input images ``paths`` or of the
    inputs ``skipped`` as no image (e.g. ``--output`` is their folder and it holds a file named like a picture: a
    damaged image is still the user's). Called before the model is built."""
    if not output:
        raise ValueError("--output is empty: name the folder for the pictures")
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"--output {output} is a file; for image inputs it must be a folder (the pictures are "
                         "written into it)")
    # read-only, full or not ours: one line now, not one skipped picture per image after the model ran on each (the
    # folder itself is made once every other argument has passed)
    check_output_dir(output, key="--output", create=False)
    inputs = {os.path.realpath(path): path for path in [*skipped, *paths]}
    kinds = ("detections", "foreground", "tokens") if show_tokens else ("detections",)
    for path, name in zip(paths, picture_names(paths)):
        for kind in kinds:
            picture = os.path.join(output, f"{name}_{kind}.png")
            if os.path.realpath(picture) in inputs:
                raise ValueError(f"--output {output}: the picture of {path} would overwrite the input "
                                 f"{inputs[os.path.realpath(picture)]}; choose another --output folder")


# Shrunk more than this, an image's objects are much smaller to the model than in training (the test resize is the
# training scale's middle): worth a word, where a photo of a few megapixels shrunk for COCO's 800 px is not.
_SHRINK_NOTED = 0.5


def detection_notes(scale, returned, drawn, threshold):
    """What a user should know about one image's detections: its test-time resize shrinks it by more than half
    (``scale``: :func:`~focus_detr.engine.predictor.resize_scale`, None when unknown), or every detection the model
    returns (``returned``) reaches a threshold above 0 (``drawn`` of them), so that there may be more objects than it
    can return."""
    notes = []
    if scale is not None and scale < _SHRINK_NOTED:
        notes.append(f"the config's test-time resize (evaluation's) shrinks it {1 / scale:.1f}x: "
                     "small objects may be missed; cut a large image into tiles of the training images' size")
    if returned and drawn == returned and threshold > 0:  # (at 0 every detection is drawn by request)
        notes.append(f"all {returned} detections the model returns score >= {threshold}: there may be more objects "
                     "(model.num_detections caps them; or cut the image into tiles)")
    return notes


def run_images(predictor, paths, output, threshold, class_names, show_tokens, resize):
    """Draws every readable image of ``paths`` into the folder ``output`` (checked by :func:`check_image_output`);
    ``resize`` is the config's test-time resize (:func:`inference_resize`), for the notes. Returns the paths
    written."""
    os.makedirs(output, exist_ok=True)
    written, drawn = [], 0
    for path, name in zip(paths, picture_names(paths)):
        image = _read_or_skip(path)
        if image is None:
            continue
        token_paths = []
        try:
            if show_tokens:
                result, token_paths = _token_pictures(predictor, image, name, output)
            else:
                result = predictor(image)
        except ValueError as error:  # an image this model cannot take (e.g. a side that resizes to 0 pixels)
            print_skipped(path, str(error))
            continue
        picture, count = _draw(image, result["instances"], class_names, threshold)
        for note in detection_notes(resize_scale(resize, *image.shape[:2]), len(result["instances"]), count,
                                    threshold):
            print(f"note: {path}: {note}", file=sys.stderr)
        detection_png = os.path.join(output, f"{name}_detections.png")
        try:
            _save_png(detection_png, picture)
        except OSError as error:  # e.g. a name too long once "_detections.png" is added: the others still go on
            print_skipped(path, str(error))
            continue
        written += [detection_png, *token_paths]
        drawn += 1
        print(f"{path}: {count} detections >= {threshold} -> {detection_png}")
        if token_paths:
            print(f"  token pictures -> {', '.join(token_paths)}")
    if not drawn:
        raise ValueError(f"no image drawn: none of the {len(paths)} image files could be used (each is named above)")
    return written


def video_output_path(output, video):
    """``output/<video name>_detections.mp4`` when ``output`` is a folder or has no extension, else ``output`` when it
    names a video file."""
    if os.path.isdir(output) or not os.path.splitext(output)[1]:
        if os.path.exists(output) and not os.path.isdir(output):
            raise ValueError(f"--output {output} is a file; for a video name a {' or '.join(VIDEO_CODECS)} file, or a "
                             "folder")
        path = os.path.join(output, f"{os.path.splitext(os.path.basename(video))[0]}_detections.mp4")
    elif os.path.splitext(output)[1].lower() in VIDEO_CODECS:
        path = output
    else:
        raise ValueError(f"--output for a video must be a folder or end in {' or '.join(VIDEO_CODECS)}, got {output}")
    if os.path.isdir(path):  # found now, not when the finished file is renamed into place
        raise ValueError(f"--output {path} is a folder: the video cannot be written under that name")
    folder = nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(folder):
        raise ValueError(f"--output {path}: {folder} is a file, not a folder")
    if os.path.realpath(path) == os.path.realpath(video):  # through a link too: the input would be replaced
        raise ValueError(f"--output {path} is the input video; name another file")
    return path


def run_video(predictor, video, output, threshold, class_names):
    """Writes ``video`` with detections drawn to ``output`` (see :func:`video_output_path`); returns its path."""
    path = video_output_path(output, video)
    capture, fps, announced = open_video(video)
    try:
        with VideoWriter(path, fps) as writer, tqdm(total=announced or None, unit="frame", desc=video) as bar:
            started = time.perf_counter()
            for frame in read_frames(capture):
                writer.write(_draw(frame, predictor(frame)["instances"], class_names, threshold)[0])
                bar.update()
            elapsed = time.perf_counter() - started
            if writer.count == 0:
                raise ValueError(f"cannot read video {video}: no frame could be decoded")
    finally:
        capture.release()
    if announced and writer.count < announced:
        print(f"warning: {video} announces {announced} frames but only {writer.count} could be decoded; "
              f"{path} holds those", file=sys.stderr)
    print(f"{video}: {writer.count} frames at {fps:g} fps -> {path}; "
          f"{writer.count / elapsed:.2f} frames per second (decoding, prediction, drawing, encoding)")
    return path


def main(args):
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise ValueError(f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}")
    if args.onnx and args.show_tokens:
        raise ValueError("--show-tokens draws the PyTorch model's token selection; it cannot be used with --onnx")
    if args.onnx and args.cuda_graphs:
        raise ValueError("--cuda-graphs replays the PyTorch model on a GPU; it cannot be used with --onnx")
    if args.video_input and args.show_tokens:
        raise ValueError("--show-tokens draws pictures of images; it cannot be used with --video-input")
    if args.input:  # inputs without an image, or a wrong --output, fail before the model is built
        paths, skipped = image_paths(args.input)
        check_image_output(args.output, paths, args.show_tokens, skipped)
    else:  # a video that cannot be read, or a wrong --output, fails before the model is built
        capture, fps, _ = open_video(args.video_input)
        capture.release()
        check_frame_rate(video_output_path(args.output, args.video_input), fps)
    cfg = load_config(args.config_file, args.opts)
    if args.onnx:
        predictor, graph_classes = _onnx_predictor(cfg, args.onnx)
        recorded = (graph_classes, args.onnx, "graph")
    else:
        device = resolve_device(args.device, "--device", "--device cpu")
        check_backend_setting(device)  # once, not as every image's problem
        # the config's train.inference_amp; --cuda-graphs on, else the config's train.inference_cuda_graphs
        predictor = FocusDETRPredictor(cfg, device=device, cuda_graphs=args.cuda_graphs or None)
        recorded = (predictor.trained_classes, predictor.weights, "checkpoint")
    # the classes the checkpoint was trained on, or the graph exported for, where it records them
    class_names = _class_names(cfg, *recorded)
    if args.video_input:
        return [run_video(predictor, args.video_input, args.output, args.confidence_threshold, class_names)]
    return run_images(predictor, paths, args.output, args.confidence_threshold, class_names, args.show_tokens,
                      inference_resize(cfg))


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, parse_args()))
