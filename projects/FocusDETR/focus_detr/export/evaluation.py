"""COCO AP of an exported graph next to the PyTorch model's, on the config's test set.

Both run through :func:`focus_detr.engine.evaluate` (``cfg.dataloader.test`` + ``cfg.dataloader.evaluator``, as
``train_net.py --eval-only`` does): the graph behind :class:`OnnxAsModel`, which takes the test loader's mapped
inputs (resized uint8 images with their original height / width) exactly as the PyTorch model takes them.
"""
import copy
import math
from typing import Dict, List, Optional

from torch import nn

from ..engine.checkpoint_classes import check_test_set_classes
from ..engine.evaluation import evaluate
from ..engine.precision import inference_amp_dtype
from .graph_config import check_graph_fits_config
from .predictor import OnnxPredictor

__all__ = ["AP_KEYS", "OnnxAsModel", "ap_table", "check_comparable_precision", "compare_ap",
           "evaluate_onnx_and_pytorch"]

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class OnnxAsModel(nn.Module):
    """An :class:`OnnxPredictor` with the PyTorch model's calling convention, for detectron2's
    ``inference_on_dataset``: ``model(batched_inputs)`` -> ``[{"instances": Instances}]``, one image at a time (the
    graph takes batch 1), boxes rescaled to each input's ``height`` x ``width`` like the model's.

    It has no parameters (evaluation runs it on the CPU); ``num_classes`` (from the graph's ``model.json`` unless
    given) lets the evaluation check the test set's classes as it does the model's.
    """

    def __init__(self, predictor: OnnxPredictor, num_classes: Optional[int] = None):
        super().__init__()
        self.predictor = predictor
        self.num_classes = num_classes if num_classes is not None else predictor.model_json.get("num_classes")
        self.images_run = 0

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        outputs = []
        for item in batched_inputs:
            instances = self.predictor(item["image"], item.get("height"), item.get("width"))
            outputs.append({"instances": instances})
            self.images_run += 1
        return outputs


def _bbox_metrics(results: Dict, runtime: str) -> Dict[str, float]:
    metrics = (results or {}).get("bbox")
    if not metrics:
        raise ValueError(f"the {runtime} evaluation gave no bbox metrics: the config's dataloader.evaluator must be "
                         "a COCO-style box evaluator")
    return {key: float(metrics.get(key, math.nan)) for key in AP_KEYS}


def check_comparable_precision(cfg, device) -> None:
    """ValueError when ``cfg`` autocasts PyTorch's inference on ``device`` (``train.inference_amp``): the graph
    runs in float32, and the table showed bfloat16's AP loss as the graph's gain (+0.25 AP50 on the trees)."""
    if inference_amp_dtype(cfg, device) is not None:
        raise ValueError("train.inference_amp autocasts the PyTorch model and the graph runs in float32: the AP "
                         "comparison would be of the two precisions, not of the graph with PyTorch; leave "
                         "train.inference_amp.enabled off")


def evaluate_onnx_and_pytorch(cfg, model: nn.Module, predictor: OnnxPredictor, output_dirs: Dict[str, str]) -> Dict:
    """Evaluates ``model`` (PyTorch), then the graph of ``predictor``, on ``cfg.dataloader.test`` with
    ``cfg.dataloader.evaluator``; the evaluator of each writes its files into ``output_dirs["pytorch"]`` /
    ``output_dirs["onnx"]`` (``cfg`` itself is left as it is). A graph that does not fit the config
    (:func:`check_graph_fits_config`), or whose model.json names the classes otherwise than the test set, is refused
    first (ValueError, one line).

    Returns ``{"pytorch": {AP key: value}, "onnx": {...}, "num_images": N}`` (COCO percentages; NaN where the test
    set has no object of that size).
    """
    if cfg.dataloader.get("evaluator", None) is None:
        raise ValueError("the config has no dataloader.evaluator: nothing to score the graph with")
    check_comparable_precision(cfg, next(model.parameters()).device)
    check_graph_fits_config(cfg, predictor)
    # model.json's class names are the graph's (a count alike can hide another order)
    check_test_set_classes(cfg, predictor.metadata.get("thing_classes", None), predictor.path,
                           "the evaluation would score the graph's classes", kind="graph")
    graph = OnnxAsModel(predictor)
    results = {}
    for runtime, runner in (("pytorch", model), ("onnx", graph)):
        run_cfg = copy.deepcopy(cfg)
        run_cfg.dataloader.evaluator.output_dir = output_dirs[runtime]
        results[runtime] = _bbox_metrics(evaluate(run_cfg, runner), runtime)
    results["num_images"] = graph.images_run
    return results


def compare_ap(results: Dict) -> Dict[str, float]:
    """``onnx - pytorch`` per AP key of :func:`evaluate_onnx_and_pytorch`'s results."""
    return {key: results["onnx"][key] - results["pytorch"][key] for key in AP_KEYS}


def ap_table(results: Dict, title: str) -> str:
    """The two runtimes' AP and their difference as a small text table headed by ``title``."""

    def cell(value, signed=False):
        if math.isnan(value):
            return f"{'-':>8}"
        if signed and round(value, 2) == 0:
            return f"{'0.00':>8}"  # not "-0.00": the runtimes agree to the digits shown
        return f"{value:>+8.2f}" if signed else f"{value:>8.2f}"

    difference = compare_ap(results)
    lines = [title, f"{'':<16}" + "".join(f"{key:>8}" for key in AP_KEYS)]
    for name, row, signed in (("pytorch", results["pytorch"], False), ("onnx", results["onnx"], False),
                              ("onnx - pytorch", difference, True)):
        lines.append(f"{name:<16}" + "".join(cell(row[key], signed) for key in AP_KEYS))
    return "\n".join(lines)
