"""``model.json``, written next to an exported ``model.onnx``: what a runtime needs besides the graph (input format,
classes, the test-time resize) and what the graph was exported from; read back and checked by the predictor."""
import json
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.data import transforms as T

from ..engine.checkpoint import same_file
from ..engine.test_set import category_ids_of_test_set
from ..modeling import FocusDETR
from .onnx_export import BATCHED_INPUT_NAMES, BATCHED_OUTPUT_NAMES, INPUT_NAME, OUTPUT_NAMES

if TYPE_CHECKING:  # the predictor reads model.json through this module
    from ..engine.checkpoint_classes import ModelClasses
    from .predictor import OnnxPredictor

__all__ = ["check_metadata", "export_metadata", "graph_weights", "model_json_classes", "resize_entry", "resize_of"]


def resize_entry(resize: T.AugmentationList) -> Optional[Dict]:
    """``{"short_edge", "max_size", "interpolation"}`` of a test-time resize that is one fixed
    ``ResizeShortestEdge`` (the DETR configs'), for a runtime without the config; None for anything else."""
    augmentations = list(resize.augs)
    if len(augmentations) != 1 or type(augmentations[0]) is not T.ResizeShortestEdge:
        return None
    resizer = augmentations[0]
    edges = set(resizer.short_edge_length)
    if len(edges) != 1:  # a random short edge is for training
        return None
    return {"short_edge": int(edges.pop()), "max_size": int(resizer.max_size), "interpolation": int(resizer.interp)}


def resize_of(metadata: Dict) -> Optional[T.AugmentationList]:
    """The test-time resize that ``model.json``'s ``resize`` entry describes (:func:`resize_entry`); None when it
    has none."""
    entry = metadata.get("resize")
    if not isinstance(entry, dict) or not {"short_edge", "max_size", "interpolation"} <= entry.keys():
        return None
    resizer = T.ResizeShortestEdge(entry["short_edge"], entry["max_size"], interp=entry["interpolation"])
    return T.AugmentationList([resizer])


def export_metadata(
    model: FocusDETR,
    opset: int,
    msda_form: str,
    input_format: str = "RGB",
    class_names: Optional[Sequence[str]] = None,
    batched: bool = False,
    resize: Optional[T.AugmentationList] = None,
    category_ids: Optional[Sequence[int]] = None,
) -> Dict:
    """What a runtime needs besides the graph (written as ``model.json`` next to ``model.onnx``): the input it takes,
    the class names and, with ``category_ids``, the dataset's category id of each output label, and the test-time
    ``resize`` (:func:`resize_entry`) that makes an image the graph's input."""
    import onnx

    selector = model.transformer.foreground_selector
    image_input = {"name": INPUT_NAME, "dtype": "uint8", "shape": ["3", "height", "width"], "format": input_format,
                   "note": "already resized like the test loader; the graph normalises it"}
    if batched:
        image_input.update(name=BATCHED_INPUT_NAMES[0], shape=["batch", "3", "height", "width"])
        image_input["note"] += (f"; padded bottom / right, each image's own (height, width) in "
                                f"{BATCHED_INPUT_NAMES[1]} (batch, 2) int64")
    return {
        "input": image_input,
        "outputs": list(BATCHED_OUTPUT_NAMES if batched else OUTPUT_NAMES),
        "batch_size": "dynamic" if batched else 1,
        "pixel_mean": model.pixel_mean.flatten().tolist(),
        "pixel_std": model.pixel_std.flatten().tolist(),
        "num_classes": model.num_classes,
        "class_names": list(class_names) if class_names else None,
        "category_ids": list(category_ids) if category_ids else None,
        "resize": resize_entry(resize) if resize is not None else None,
        "num_detections": model.num_detections,
        "keep_ratio": selector.keep_ratio,
        "cascade_keep_ratios": list(selector.cascade_keep_ratios),
        "opset": opset,
        "msda_form": msda_form,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
    }


# What model.json's readers rely on, by key ("input.format": the "format" of "input"); the tool writes more.
_METADATA_TYPES = {"input": dict, "input.format": str, "num_classes": int, "config_file": str, "init_checkpoint": str,
                   "weights": str, "overrides": list, "resize": dict, "resize.short_edge": int, "resize.max_size": int,
                   "resize.interpolation": int, "category_ids": list, "class_names": list}


def check_metadata(metadata, path: str) -> None:
    """ValueError (one line) when the json object ``metadata`` read from ``path`` does not have the types
    ``tools/export_model.py`` writes, for the keys it has."""
    fix = "export the graph again, or remove the file"
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} (the graph's metadata) is not a json object: {fix}")
    entries = dict(metadata)
    for section in ("input", "resize"):
        if isinstance(metadata.get(section), dict):
            entries.update({f"{section}.{key}": value for key, value in metadata[section].items()})
    for key, kind in _METADATA_TYPES.items():
        value = entries.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"{path} (the graph's metadata) has {key} = {json.dumps(value)[:60]}, not a "
                             f"{'json object' if kind is dict else kind.__name__}: {fix}")
    problem = _value_problem(entries)
    if problem is not None:  # an edited file: a resize to 10**6 pixels ran out of memory
        raise ValueError(f"{path} (the graph's metadata) has {problem}: {fix}")


# Pixels of an image's side a resize may ask for; what the tool writes is a config's test-time resize (800 / 1333).
_MAX_SIDE = 8192
# PIL's resampling filters (Image.Resampling: NEAREST 0 ... HAMMING 5), which ResizeShortestEdge takes.
_INTERPOLATIONS = range(6)


def _value_problem(entries) -> Optional[str]:
    """What in model.json's ``entries`` (dotted keys, types checked) no export writes, or None."""
    shown = {key: json.dumps(value)[:60] for key, value in entries.items()}
    if entries.get("input.format") not in (None, "RGB", "BGR"):
        return f"input.format = {shown['input.format']}, not \"RGB\" or \"BGR\""
    if entries.get("num_classes") is not None and entries["num_classes"] < 1:
        return f"num_classes = {shown['num_classes']}, not at least 1"
    # 0: detectron2's "do not resize"; max_size has no bound (ResizeShortestEdge's default is sys.maxsize)
    if entries.get("resize.short_edge") is not None and not 0 <= entries["resize.short_edge"] <= _MAX_SIDE:
        return f"resize.short_edge = {shown['resize.short_edge']}, not a side of 0 to {_MAX_SIDE} pixels"
    if entries.get("resize.max_size") is not None and entries["resize.max_size"] < 1:
        return f"resize.max_size = {shown['resize.max_size']}, not at least 1 pixel"
    if entries.get("resize.interpolation") is not None and entries["resize.interpolation"] not in _INTERPOLATIONS:
        return f"resize.interpolation = {shown['resize.interpolation']}, not one of PIL's filters (0 to 5)"
    for key, kind in (("class_names", str), ("category_ids", int)):
        values = entries.get(key)
        if values is None:
            continue
        if not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
            return f"{key} = {shown[key]}, not a list of {kind.__name__}s"
        if entries.get("num_classes") is not None and len(values) != entries["num_classes"]:
            return f"{len(values)} {key} for num_classes = {entries['num_classes']}"
    return None


def graph_weights(predictor: "OnnxPredictor", init_checkpoint: str, weights: Optional[str] = None) -> Optional[str]:
    """What the graph was exported from (model.json's ``init_checkpoint``, quoted; "random weights" when it is
    empty) when that is not ``init_checkpoint`` (the same file, or both empty, match), or when it is but the graph
    holds other weights of it than ``weights`` ("ema" or "trained": a checkpoint's average or its trained weights;
    None: not compared); None when they match or the graph does not say."""
    exported_from = predictor.model_json.get("init_checkpoint")
    if exported_from is None:
        return None
    if not same_file(exported_from, init_checkpoint):
        return repr(exported_from) if exported_from else "random weights"
    exported_weights = predictor.model_json.get("weights")
    if weights in ("ema", "trained") and exported_weights in ("ema", "trained") and exported_weights != weights:
        return f"the {'EMA' if exported_weights == 'ema' else 'trained'} weights of {exported_from!r}"
    return None


def model_json_classes(cfg, classes: "ModelClasses", num_classes: int
                       ) -> Tuple[Optional[List[str]], Optional[List[int]], Optional[str]]:
    """model.json's class names, the dataset category id of each output label (as detectron2's COCO loader numbers
    them, e.g. [3, 7, 42]; only for the test set's names) and why there are none, from ``classes``
    (:func:`~focus_detr.engine.checkpoint_classes.model_classes`: the test set's names, else the checkpoint's):
    ``(None, None, why)`` when the config's dataset cannot be read or the names are of another number of classes than
    the model's ``num_classes`` (the graph would be refused); ``(None, None, None)`` when nothing names them."""
    names = classes.names
    if names is None:
        return None, None, None if classes.error is None else str(classes.error)
    if len(names) != num_classes:
        where = "the test set has" if classes.from_test_set else "the checkpoint records"
        return None, None, f"{where} {len(names)} classes, the model {num_classes} (model.num_classes)"
    return list(names), category_ids_of_test_set(cfg) if classes.from_test_set else None, None
