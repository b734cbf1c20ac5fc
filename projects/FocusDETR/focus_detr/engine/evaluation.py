"""COCO-style evaluation of a model on the config's test loader."""
import logging

import torch
from detectron2.config import instantiate
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format

from ..analysis.selection_quality_evaluator import (
    RESULTS_KEY,
    SelectionQualityEvaluator,
    TokenSelectionOutputs,
    supports_token_selection,
)
from ..data import check_dataset_jsons, check_num_classes
from .config import ConfigError, _dataset_names_in
from .cuda_graphs import CUDAGraphInference, graphs_available, graphs_supported, inference_cuda_graphs
from .precision import amp_autocast, inference_amp_dtype

__all__ = ["check_model_classes", "evaluate", "selection_quality_enabled"]

logger = logging.getLogger(__name__)


def evaluate(cfg, model):
    """Runs ``cfg.dataloader.test`` through ``model`` (under autocast when ``train.inference_amp`` is enabled, from
    CUDA graphs when ``train.inference_cuda_graphs`` is) and scores it with ``cfg.dataloader.evaluator``; with
    ``train.selection_quality`` (the default) and a model that reports its token selection (FocusDETR), also scores
    that selection against the ground truth (:mod:`focus_detr.analysis.selection_quality`; its table goes to the
    log).

    Returns:
        dict: e.g. ``{"bbox": {"AP": ..., ...}, "selection_quality": {"object_recall/layer0": ..., ...}}`` (empty
        dict on non-main ranks of a DDP run).
    """
    if cfg.dataloader.get("evaluator", None) is None:
        logger.warning("The config has no dataloader.evaluator: skipping evaluation")
        return {}
    score_selection = selection_quality_enabled(cfg)
    batch_size = cfg.dataloader.test.get("batch_size", 1)
    if batch_size > 1:
        logger.warning(
            f"dataloader.test.batch_size is {batch_size}: images of different sizes share a padded batch, which "
            "changes their scores (AP 0.595 at batch 1 vs 0.511 at batch 4 on trees_val); report numbers at batch 1"
        )
    device = _model_device(model)
    amp_dtype = inference_amp_dtype(cfg, device)
    loader = instantiate(cfg.dataloader.test)  # loads (and checks) the test data before the evaluator reads it
    check_model_classes(model, cfg.dataloader.test)
    evaluator = instantiate(cfg.dataloader.evaluator)
    graph_settings = inference_cuda_graphs(cfg)
    if graph_settings is not None:
        inner = getattr(model, "module", model)  # no DDP at inference
        if not graphs_available(device):
            logger.warning(f"train.inference_cuda_graphs needs a CUDA device: evaluating eagerly on {device}")
        elif not graphs_supported(inner):
            logger.warning(f"train.inference_cuda_graphs: {type(inner).__name__} has no detect(): evaluating eagerly")
        else:
            model = CUDAGraphInference(inner, **graph_settings)
    if score_selection:
        if supports_token_selection(model):
            names = _dataset_names_in(cfg.dataloader.test)
            evaluator = DatasetEvaluators([evaluator, SelectionQualityEvaluator(names)])
            model = TokenSelectionOutputs(model)  # the same forward, also returning the token selection
        else:
            logger.info(f"{type(model).__name__} does not report its token selection: no selection quality metrics")
    with amp_autocast(device, amp_dtype):
        results = inference_on_dataset(model, loader, evaluator)
    if results:
        print_csv_format({task: value for task, value in results.items() if task != RESULTS_KEY})
    return results or {}


def selection_quality_enabled(cfg) -> bool:
    """``train.selection_quality`` (True when the config has no such entry); raises ConfigError unless a bool."""
    enabled = (cfg.get("train", None) or {}).get("selection_quality", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"train.selection_quality must be True or False, got {enabled!r}")
    return enabled


def check_model_classes(model, dataloader_node):
    """Raises ValueError when the datasets a loader config names have another number of classes than ``model``
    (models without a ``num_classes`` attribute are not checked) or an inconsistent COCO json (duplicate ids, ...)."""
    check_dataset_jsons(_dataset_names_in(dataloader_node))  # the test data too, before training starts
    num_classes = getattr(getattr(model, "module", model), "num_classes", None)
    if num_classes is not None:
        check_num_classes(num_classes, _dataset_names_in(dataloader_node))


def _model_device(model):
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")
