"""Whether a config may drive an exported graph (prepare its images, name its classes, score it): what the graph's
``model.json`` says it was exported with, against the config's."""
from typing import Dict, Optional

from ..engine.predictor import inference_resize, input_format
from .metadata import resize_entry
from .predictor import OnnxPredictor

__all__ = ["check_graph_fits_config"]


def _shown_resize(entry: Optional[Dict], interpolation: bool) -> str:
    if entry is None:
        return "otherwise than by one fixed ResizeShortestEdge"
    shown = f"to a short edge of {entry['short_edge']} pixels, the long one at most {entry['max_size']}"
    return shown + (f", interpolation {entry['interpolation']}" if interpolation else "")


def _resize_mismatch(cfg, graph_resize: Optional[Dict]) -> Optional[str]:
    """The graph was verified, and ``predict_image`` runs it, on images resized as its model.json says; the config's
    test-time resize feeds it in the demo and the evaluation, where another one gave other boxes for one image."""
    # a graph exported before model.json said, from a config that resizes otherwise, or an entry missing a field
    # (predict_image then uses no resize of its own either)
    if not isinstance(graph_resize, dict) or not {"short_edge", "max_size", "interpolation"} <= graph_resize.keys():
        return None
    config_resize = resize_entry(inference_resize(cfg))
    if config_resize == graph_resize:
        return None
    interpolation = config_resize is not None and config_resize["interpolation"] != graph_resize["interpolation"]
    return (f"was exported for images resized {_shown_resize(graph_resize, interpolation)} but the config's test "
            f"loader resizes them {_shown_resize(config_resize, interpolation)} (dataloader.test.mapper.augmentation)")


def _format_mismatch(cfg, graph_format: Optional[str]) -> Optional[str]:
    config_format = input_format(cfg)
    if graph_format is None or graph_format == config_format:
        return None
    return (f"takes {graph_format} images but the config's test loader gives {config_format} "
            "(dataloader.test.mapper.img_format)")


def _config_num_classes(cfg) -> Optional[int]:
    try:
        return cfg.model.num_classes
    except (AttributeError, KeyError):  # left at the model's default: nothing to compare
        return None


def _class_count_mismatch(cfg, graph_classes: Optional[int]) -> Optional[str]:
    config_classes = _config_num_classes(cfg)
    if graph_classes is None or config_classes is None or graph_classes == config_classes:
        return None
    return (f"predicts {graph_classes} class{'es' if graph_classes != 1 else ''} but the config's model has "
            f"{config_classes} (model.num_classes)")


def check_graph_fits_config(cfg, predictor: OnnxPredictor) -> Optional[str]:
    """Whether ``cfg`` may drive ``predictor``'s graph (prepare its images, name its classes, score it).

    Raises ValueError, in one line naming both values, when the graph's ``model.json`` says it takes another channel
    order than the config's test loader gives (it would see swapped colours and silently find other objects),
    predicts another number of classes than the config's model (its labels would be named and scored as other
    classes) or was exported for images resized otherwise than the config's test loader resizes them (the demo
    and the evaluation would feed it images of other sizes than ``OnnxPredictor.predict_image``, and get other
    boxes). Returns None when model.json agrees (a value it lacks is not compared), and the warning for the user
    when the graph has no model.json (exported elsewhere): nothing could be checked.
    """
    metadata = predictor.model_json
    if not metadata:
        return (
            f"{predictor.path} has no model.json next to it (exported elsewhere?): its input format and classes "
            "cannot be checked against the config's"
        )
    problems = [problem for problem in (
        _format_mismatch(cfg, (metadata.get("input") or {}).get("format")),
        _class_count_mismatch(cfg, metadata.get("num_classes")),
        _resize_mismatch(cfg, metadata.get("resize")),
    ) if problem]
    if problems:
        overrides = " ".join(metadata.get("overrides") or [])
        exported_from = metadata.get("config_file") or ""
        exported_from = f" ({exported_from}{' with ' + overrides if overrides else ''})" if exported_from else ""
        raise ValueError(f"{predictor.path} (its model.json) {' and '.join(problems)}: use the config it was "
                         f"exported from{exported_from} or export the graph from this one")
    return None
