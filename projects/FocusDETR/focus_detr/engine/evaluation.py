"""COCO-style evaluation of a model on the config's test loader, and its results file."""
import json
import logging
import math

import torch
from detectron2.config import instantiate
from detectron2.evaluation import (COCOEvaluator, DatasetEvaluator, DatasetEvaluators, inference_on_dataset,
                                   print_csv_format)
from detectron2.utils import comm
from omegaconf import DictConfig, open_dict, read_write
from torch.nn.parallel import DistributedDataParallel

from ..analysis.selection_quality_evaluator import (
    RESULTS_KEY,
    SelectionQualityEvaluator,
    TokenSelectionOutputs,
    supports_token_selection,
)
from .agreement import ProcessFailed, failure_report, raise_agreed_failure
from .checkpoint import write_json
from .cli import is_out_of_memory
from .coco_metrics import metrics_of_no_detections
from .config import ConfigError, _dataset_names_in
from .cuda_graphs import CUDAGraphInference, graphs_available, graphs_supported, inference_cuda_graphs
from .precision import amp_autocast, inference_amp_dtype
from .readable_batches import ReadableBatches
from .test_set import (build_loader, check_evaluation_datasets, check_evaluator_settings, check_model_classes,
                       evaluator_nodes, is_coco_evaluator)

__all__ = ["EVALUATION_OUT_OF_MEMORY_REMEDY", "EvaluationFailed", "evaluate", "read_eval_results",
           "selection_quality_enabled", "write_eval_results"]

logger = logging.getLogger(__name__)

EVALUATION_OUT_OF_MEMORY_REMEDY = ("lower dataloader.test.batch_size or the test image size (or "
                                   "model.transformer.num_queries where raised), or evaluate with "
                                   "train.inference_amp.enabled=True")


class EvaluationFailed(ProcessFailed):
    """A process of a multi-process evaluation could not evaluate its share of the test set (a user error: an
    unreadable test image, out of memory, ...). Every process raises it with the same message before any metric is
    computed, so none waits for the others for good and a training run can save; ``remedy`` says what to change."""


def evaluate(cfg, model):
    """Runs ``cfg.dataloader.test`` through ``model`` (under autocast when ``train.inference_amp`` is enabled, from
    CUDA graphs when ``train.inference_cuda_graphs`` is) and scores it with ``cfg.dataloader.evaluator``; with
    ``train.selection_quality`` (the default) and a model that reports its token selection (FocusDETR), also scores
    that selection against the ground truth (:mod:`focus_detr.analysis.selection_quality`; its table goes to the
    log).

    With several processes, each evaluates its share with the model itself (not its DDP wrapper, whose forward may
    broadcast buffers: a collective); when one fails, all raise :class:`EvaluationFailed` together.

    ``dataloader.evaluator`` may be a list of evaluators, which run as one (detectron2's ``DatasetEvaluators``).

    Returns:
        dict: e.g. ``{"bbox": {"AP": ..., ...}, "selection_quality": {"object_recall/layer0": ..., ...}}`` (empty
        dict on non-main ranks of a DDP run).
    """
    if cfg.dataloader.get("evaluator", None) is None:
        logger.warning("The config has no dataloader.evaluator: skipping evaluation")
        return {}
    check_evaluator_settings(cfg)
    check_evaluation_datasets(cfg)
    score_selection = selection_quality_enabled(cfg)
    batch_size = cfg.dataloader.test.get("batch_size", 1)
    if batch_size > 1:
        logger.warning(
            f"dataloader.test.batch_size is {batch_size}: images of different sizes share a padded batch, which "
            "changes their detections and token selection (the main job's model on trees_val: AP 5.58 at batch 1, "
            "5.77 at batch 4); report numbers at batch 1"
        )
    if isinstance(model, DistributedDataParallel):
        model = model.module
    device = _model_device(model)
    amp_dtype = inference_amp_dtype(cfg, device)
    loader = build_loader(cfg, "test")  # loads (and checks) the test data before the evaluator reads it
    check_model_classes(model, cfg.dataloader.test)
    evaluators = [_build_evaluator(node) for _, node in evaluator_nodes(cfg)]
    evaluator = evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
    # the COCO evaluator itself, before the selection-quality metrics may wrap it (None: other evaluators)
    coco_evaluator = next((each for each in evaluators if isinstance(each, COCOEvaluator)), None)
    graph_settings = inference_cuda_graphs(cfg)
    if graph_settings is not None:
        if not graphs_available(device):
            logger.warning(f"train.inference_cuda_graphs needs a CUDA device: evaluating eagerly on {device}")
        elif not graphs_supported(model):
            logger.warning(f"train.inference_cuda_graphs: {type(model).__name__} has no detect(): evaluating eagerly")
        else:
            model = CUDAGraphInference(model, **graph_settings)
    if score_selection:
        if supports_token_selection(model):
            names = _dataset_names_in(cfg.dataloader.test)
            evaluator = DatasetEvaluators([evaluator, SelectionQualityEvaluator(names)])
            model = TokenSelectionOutputs(model)  # the same forward, also returning the token selection
        else:
            logger.info(f"{type(model).__name__} does not report its token selection: no selection quality metrics")
    readable = ReadableBatches(loader)
    with amp_autocast(device, amp_dtype):
        results = _inference_on_every_process(model, readable, evaluator)
    left_out = readable.left_out_everywhere()
    if results:
        box_metrics = list(results.get("bbox", {}).values())
        if box_metrics and all(math.isnan(value) for value in box_metrics):
            # detectron2's NaN for no detections at all, or COCO's -1 for no ground truth
            names = _dataset_names_in(cfg.dataloader.test)
            no_detections = None
            if coco_evaluator is not None:  # its ground truth and classes, as its own evaluate() reads them
                no_detections = metrics_of_no_detections(coco_evaluator._coco_api,
                                                         coco_evaluator._metadata.get("thing_classes", None))
            if no_detections is not None:
                results["bbox"] = no_detections
                logger.warning(f"The model detected nothing on the test set {names}: its COCO metrics are 0 (no box "
                               "found), where detectron2 reports NaN")
            else:
                logger.warning(f"Every COCO metric is NaN: the test set {names} has no ground-truth boxes to score the "
                               "detections against")
        print_csv_format({task: value for task, value in results.items() if task != RESULTS_KEY})
    if coco_evaluator is not None and "bbox" not in (results or {}) and comm.is_main_process():
        # COCOEvaluator only logs "Annotations are not available for evaluation." and returns nothing
        logger.warning(f"No COCO metric: the test set {_dataset_names_in(cfg.dataloader.test)} has no "
                       "annotations (its json has no \"annotations\" list) to score the detections against")
    if left_out and comm.is_main_process():
        logger.warning(left_out)
    return results or {}


def _build_evaluator(node):
    """``instantiate(node)``; a COCOEvaluator converts a dataset registered in code to COCO json anew in each run
    (detectron2 then keeps the json's path in the dataset's metadata for the rest of the process), unless the config
    asks for detectron2's default (``allow_cached_coco=True``), which reuses the json an earlier run left in the same
    folder even after the dataset changed: boxes moved by 40 pixels scored AP 0.0 against their own ground truth,
    with only a warning."""
    if not (isinstance(node, DictConfig) and is_coco_evaluator(node) and "allow_cached_coco" not in node):
        return instantiate(node)
    # in place, not on a copy: the node's interpolations resolve against the config (read-only or struct too)
    with read_write(node), open_dict(node):
        node.allow_cached_coco = False
        try:
            return instantiate(node)
        finally:
            del node["allow_cached_coco"]


class _AgreeingEvaluator(DatasetEvaluator):
    """``evaluator`` whose ``evaluate`` first has every process say whether its share ran (``failure``: this
    process's error, None: it ran), so that all raise together before the evaluator's own collectives."""

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.failure = None
        self.evaluating = False  # reached evaluate(): every process is past its share

    def reset(self):
        self.evaluator.reset()

    def process(self, inputs, outputs):
        self.evaluator.process(inputs, outputs)

    def evaluate(self):
        self.evaluating = True
        report = failure_report(self.failure, EvaluationFailed)
        raise_agreed_failure(self.failure, comm.all_gather(report), "in its share of the evaluation")
        return self.evaluator.evaluate()


def _inference_on_every_process(model, loader, evaluator):
    """detectron2's ``inference_on_dataset``; torch's out-of-memory error gets the evaluation's ``remedy``. With
    several processes, one whose share fails (its test data, its model calls) does not raise alone, which would
    leave the others waiting in the evaluator's gather for good: it joins them where they agree
    (:class:`_AgreeingEvaluator`), and all raise there."""
    agreeing = _AgreeingEvaluator(evaluator) if comm.get_world_size() > 1 else None
    try:
        return inference_on_dataset(model, loader, agreeing or evaluator)
    except Exception as error:
        if is_out_of_memory(error):  # what to change differs from a training step's
            error.remedy = EVALUATION_OUT_OF_MEMORY_REMEDY
        if agreeing is None or agreeing.evaluating:  # one process, or raised where every process already is
            raise
        agreeing.failure = error
        agreeing.evaluate()  # meets the others' agreement and raises there with them
        raise  # not reached: this process's own report is a failure


def selection_quality_enabled(cfg) -> bool:
    """``train.selection_quality`` (True when the config has no such entry); raises ConfigError unless a bool."""
    enabled = (cfg.get("train", None) or {}).get("selection_quality", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"train.selection_quality must be True or False, got {enabled!r}")
    return enabled


def _model_device(model):
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _nan_as_null(value):
    if isinstance(value, dict):
        return {key: _nan_as_null(child) for key, child in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def write_eval_results(path, results):
    """Writes the results dict of :func:`evaluate` to ``path`` as standard JSON: a metric COCO leaves undefined (NaN,
    e.g. APl without large objects) is ``null``, which every JSON reader parses (a bare ``NaN`` is Python's
    extension), atomically."""
    write_json(path, _nan_as_null(results), allow_nan=False)


def read_eval_results(path):
    """The results dict :func:`write_eval_results` wrote, its ``null`` metrics NaN again."""
    with open(path) as f:
        return json.load(f, object_hook=lambda record: {k: math.nan if v is None else v for k, v in record.items()})

