"""Hungarian matching of predictions to ground truth with a sigmoid-focal classification cost (spec 7.1)."""

from typing import Dict, List, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ..layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


def _check_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"HungarianMatcher: {name} must be >= 0, got {value}")


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground-truth boxes, independently per image.

    The cost of assigning query q to target t is
    ``cost_bbox * L1(box_q, box_t) + cost_class * focal(q, label_t) + cost_giou * (-GIoU(box_q, box_t))``
    where ``focal = alpha (1-p)^gamma (-log(p + 1e-8)) - (1-alpha) p^gamma (-log(1-p + 1e-8))`` with
    ``p = sigmoid(logit of label_t)``. The assignment minimises the total cost (scipy ``linear_sum_assignment``).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ):
        super().__init__()
        for name, value in (("cost_class", cost_class), ("cost_bbox", cost_bbox), ("cost_giou", cost_giou)):
            _check_non_negative(name, value)
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: at least one of cost_class, cost_bbox, cost_giou must be > 0")
        if not 0 <= alpha <= 1:
            raise ValueError(f"HungarianMatcher: alpha must be in [0, 1], got {alpha}")
        _check_non_negative("gamma", gamma)
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.alpha = alpha
        self.gamma = gamma

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
            f"alpha={self.alpha}, gamma={self.gamma}"
        )

    def cost_matrix(self, pred_logits: Tensor, pred_boxes: Tensor, labels: Tensor, boxes: Tensor) -> Tensor:
        """Matching cost of every query to every target: pred_logits (..., Q, K), pred_boxes (..., Q, 4), labels
        (..., n), boxes (..., n, 4) -> (..., Q, n); leading dimensions (images) are matched pairwise."""
        prob = pred_logits.sigmoid()
        neg_cost = (1 - self.alpha) * (prob**self.gamma) * (-(1 - prob + 1e-8).log())
        pos_cost = self.alpha * ((1 - prob) ** self.gamma) * (-(prob + 1e-8).log())
        columns = labels.unsqueeze(-2).expand(*pred_logits.shape[:-1], labels.shape[-1])
        cost_class = pos_cost.gather(-1, columns) - neg_cost.gather(-1, columns)
        cost_bbox = torch.cdist(pred_boxes, boxes, p=1)
        cost_giou = -generalized_box_iou(
            box_cxcywh_to_xyxy(pred_boxes).unsqueeze(-2), box_cxcywh_to_xyxy(boxes).unsqueeze(-3), paired=True,
            validate=False,  # predicted sizes are sigmoids; the targets are checked in forward
        )
        return self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou

    @torch.no_grad()
    def forward(
        self, pred_logits: Tensor, pred_boxes: Tensor, targets: List[Dict[str, Tensor]]
    ) -> List[Tuple[Tensor, Tensor]]:
        """
        Args:
            pred_logits: (B, Q, K) raw class logits.
            pred_boxes: (B, Q, 4) normalised cxcywh boxes.
            targets: B dicts with "labels" (n,) int64 in [0, K) and "boxes" (n, 4) normalised cxcywh.
        Returns:
            B pairs (query_idx, target_idx) of int64 CPU tensors of length min(Q, n); query_idx[i] is matched to
            target_idx[i]. Images without targets give two empty tensors.
        """
        if pred_logits.dim() != 3 or pred_boxes.dim() != 3 or pred_boxes.shape[-1] != 4:
            raise ValueError(
                f"HungarianMatcher: expected pred_logits (B, Q, K) and pred_boxes (B, Q, 4), got "
                f"{tuple(pred_logits.shape)} and {tuple(pred_boxes.shape)}"
            )
        if pred_logits.shape[:2] != pred_boxes.shape[:2]:
            raise ValueError(
                f"HungarianMatcher: pred_logits {tuple(pred_logits.shape)} and pred_boxes {tuple(pred_boxes.shape)} "
                "disagree on (B, Q)"
            )
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {len(targets)} targets for a batch of {pred_logits.shape[0]} images")
        num_classes = pred_logits.shape[-1]
        for target in targets:
            labels, target_boxes = target["labels"], target["boxes"]
            if target_boxes.dim() != 2 or target_boxes.shape[-1] != 4 or labels.shape != target_boxes.shape[:1]:
                raise ValueError(
                    f"HungarianMatcher: target labels {tuple(labels.shape)} / boxes {tuple(target_boxes.shape)} "
                    "must be (n,) and (n, 4)"
                )
        target_labels = [target["labels"] for target in targets]
        sizes = [len(labels) for labels in target_labels]
        if sum(sizes) == 0:
            return [_no_match() for _ in targets]
        # Every image's queries against its own targets, padded to the largest count (with a valid box), in one
        # (B, Q, n_max) cost tensor moved to the host in one transfer, which also brings the target checks (one
        # device read per call); each image is matched on its own columns. Until checked, labels are clamped so
        # that none indexes outside the logits.
        padded_labels = pad_sequence(target_labels, batch_first=True).clamp(0, num_classes - 1)
        padded_boxes = pad_sequence([target["boxes"] for target in targets], batch_first=True, padding_value=0.5)
        cost = self.cost_matrix(pred_logits, pred_boxes, padded_labels, padded_boxes)
        labels, boxes = torch.cat(target_labels), torch.cat([target["boxes"] for target in targets])
        invalid = torch.stack([
            ((labels < 0) | (labels >= num_classes)).any(), ~((boxes[:, 2:] >= 0).all() & boxes.isfinite().all())
        ])
        read = torch.cat([cost.flatten().float(), invalid.to(torch.float32)]).cpu().numpy()
        if read[-2]:
            raise ValueError(f"HungarianMatcher: target labels must be in [0, {num_classes}), got {labels.tolist()}")
        if read[-1]:
            raise ValueError(
                f"HungarianMatcher: target boxes must be finite cxcywh with sizes >= 0, got {boxes.tolist()}"
            )
        costs = read[:-2].reshape(cost.shape)
        if not np.isfinite(costs).all():
            # non-finite predictions (a diverging run): matched anyway; their loss is not finite either, which the
            # trainer reports in every process at once, where an error here would stop this process alone
            costs = np.nan_to_num(costs, nan=_UNMATCHABLE, posinf=_UNMATCHABLE, neginf=-_UNMATCHABLE)
        indices = []
        for image_cost, size in zip(costs, sizes):
            if size == 0:
                indices.append(_no_match())
                continue
            query_idx, target_idx = linear_sum_assignment(image_cost[:, :size])
            indices.append(
                (torch.as_tensor(query_idx, dtype=torch.int64), torch.as_tensor(target_idx, dtype=torch.int64))
            )
        return indices


# What a non-finite matching cost counts as: far above any real cost (focal + L1 + GIoU terms stay below ~100).
_UNMATCHABLE = 1e9


def _no_match() -> Tuple[Tensor, Tensor]:
    return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
