"""COCO-style evaluation of a model on the config's test loader."""
import logging

from detectron2.config import instantiate
from detectron2.evaluation import inference_on_dataset, print_csv_format

__all__ = ["evaluate"]

logger = logging.getLogger(__name__)


def evaluate(cfg, model):
    """Runs ``cfg.dataloader.test`` through ``model`` and scores it with ``cfg.dataloader.evaluator``.

    Returns:
        dict: e.g. ``{"bbox": {"AP": ..., "AP50": ..., ...}}`` (empty dict on non-main ranks of a DDP run).
    """
    if cfg.dataloader.get("evaluator", None) is None:
        logger.warning("The config has no dataloader.evaluator: skipping evaluation")
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if results:
        print_csv_format(results)
    return results or {}
