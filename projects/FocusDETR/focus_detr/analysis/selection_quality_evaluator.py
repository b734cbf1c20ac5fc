"""Token-selection quality (:mod:`focus_detr.analysis.selection_quality`) inside a detectron2 evaluation: a model
wrapper that also returns the token selection, and the :class:`DatasetEvaluator` that scores it.

The ground truth comes from the dataset dicts (``DatasetCatalog``) by ``image_id``, as ``COCOEvaluator`` reads it,
since test-time mappers drop the annotations.
"""
import inspect
import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from torch import nn

from .selection_quality import (
    COCO_SIZE_NAMES,
    COCO_SIZE_THRESHOLDS,
    GroundTruth,
    SelectionCounts,
    format_selection_quality,
    ground_truth_of,
    image_selection_counts,
    selection_quality_metrics,
    token_grid,
)

__all__ = ["RESULTS_KEY", "SelectionQualityEvaluator", "TokenSelectionOutputs", "supports_token_selection"]

logger = logging.getLogger(__name__)

RESULTS_KEY = "selection_quality"  # the evaluator's entry in the evaluation results


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def supports_token_selection(model: nn.Module) -> bool:
    """Whether ``model`` (or the module a DDP wrapper holds) reports its token selection (FocusDETR does)."""
    forward_inference = getattr(_unwrapped(model), "forward_inference", None)
    return forward_inference is not None and "return_token_selection" in inspect.signature(forward_inference).parameters


class TokenSelectionOutputs(nn.Module):
    """``model`` whose calls return its detections together with its token selection
    (``forward_inference(..., return_token_selection=True)``), for ``inference_on_dataset``. The model itself is
    unchanged: its own calls still return detections alone. A DDP wrapper is bypassed (no gradients at inference)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # the model's mode, which inference_on_dataset gives back to the wrapper (and so to the model) when done: a
        # new module's own (training) left an evaluated eval-mode model in training mode
        self.training = model.training

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        return _unwrapped(self.model).forward_inference(batched_inputs, return_token_selection=True)


class SelectionQualityEvaluator(DatasetEvaluator):
    """Scores the token selection of a model wrapped in :class:`TokenSelectionOutputs` against the ground truth of
    ``dataset_names`` (matched by ``image_id``). ``evaluate`` logs the table and returns
    ``{RESULTS_KEY: selection_quality_metrics(...)}`` on the main process (totals over every process's images), None
    on the others.

    Args:
        dataset_names: the registered dataset(s) the evaluated loader reads.
        size_thresholds / size_names: object-size buckets by box area (default: COCO's).
    """

    def __init__(
        self,
        dataset_names: Sequence[str],
        size_thresholds: Sequence[float] = COCO_SIZE_THRESHOLDS,
        size_names: Sequence[str] = COCO_SIZE_NAMES,
    ):
        if len(size_names) != len(size_thresholds) + 1:
            raise ValueError(
                f"SelectionQualityEvaluator: {len(size_names)} size names for {len(size_thresholds)} thresholds"
            )
        self._dataset_names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
        self._size_thresholds = tuple(float(t) for t in size_thresholds)
        self._size_names = tuple(size_names)
        self._truth: Optional[Dict[object, GroundTruth]] = None
        self._counts: Optional[SelectionCounts] = None

    def _ground_truth(self) -> Dict[object, GroundTruth]:
        if self._truth is None:
            from detectron2.data import DatasetCatalog

            self._truth = {}
            for name in self._dataset_names:
                for record in DatasetCatalog.get(name):
                    if record["image_id"] in self._truth:
                        raise ValueError(
                            f"selection quality: image_id {record['image_id']!r} appears twice in {self._dataset_names}"
                        )
                    self._truth[record["image_id"]] = ground_truth_of(record)
        return self._truth

    def reset(self):
        self._counts = None

    def process(self, inputs, outputs):
        truth = self._ground_truth()
        for item, output in zip(inputs, outputs):
            if "token_selection" not in output:
                raise ValueError("selection quality: the model's outputs carry no token_selection")
            image_id = item.get("image_id")
            image_truth = truth.get(image_id)
            if image_truth is None:
                raise ValueError(f"selection quality: image_id {image_id!r} is not in {self._dataset_names}")
            selection = output["token_selection"]
            grid = token_grid(
                selection["spatial_shapes"].cpu(),
                output["image_size"],
                output["padded_size"],
                (image_truth.height, image_truth.width),
            )
            kept, fine = _indices_on_host(selection["foreground_inds"], selection["fine_grained_inds"])
            counts = image_selection_counts(kept, fine, grid, image_truth, self._size_thresholds)
            self._counts = counts if self._counts is None else self._counts + counts

    def evaluate(self):
        gathered = [counts for counts in comm.gather(self._counts, dst=0) if counts is not None]
        if not comm.is_main_process():
            return None
        if not gathered:
            logger.warning("selection quality: no image was evaluated")
            return {}
        total = gathered[0]
        for counts in gathered[1:]:
            total = total + counts
        metrics = selection_quality_metrics(total, self._size_names)
        logger.info(format_selection_quality(metrics, self._size_names))
        return {RESULTS_KEY: metrics}


def _indices_on_host(kept: Sequence[torch.Tensor], fine: Sequence[torch.Tensor]):
    """Per-layer index tensors -> numpy arrays, in one device-to-host copy."""
    tensors = [*kept, *fine]
    flat = torch.cat([t.reshape(-1).long() for t in tensors]).cpu().numpy()
    pieces = np.split(flat, np.cumsum([t.numel() for t in tensors])[:-1])
    return pieces[: len(kept)], pieces[len(kept) :]
