"""Do two sets of detections agree? Used to check an exported graph against the PyTorch model."""
from typing import Tuple

import torch
from detectron2.structures import Instances, pairwise_iou

__all__ = ["match_detections"]


def match_detections(
    reference: Instances, candidate: Instances, top: int = 100, min_iou: float = 0.99, score_tol: float = 1e-3
) -> Tuple[int, int]:
    """How many of ``reference``'s ``top`` best detections have a counterpart in ``candidate``: same class, box IoU
    >= ``min_iou``, score within ``score_tol``; each candidate used once. Near-equal scores may be ordered either
    way, so counterparts are searched among all candidates. Returns ``(matched, compared)``."""
    order = reference.scores.argsort(descending=True)[:top]
    reference = reference[order]
    iou = pairwise_iou(reference.pred_boxes, candidate.pred_boxes)
    fits = (
        (reference.pred_classes[:, None] == candidate.pred_classes[None])
        & ((reference.scores[:, None] - candidate.scores[None]).abs() <= score_tol)
        & (iou >= min_iou)
    )
    used = torch.zeros(len(candidate), dtype=torch.bool)
    matched = 0
    for row in fits:
        free = (row & ~used).nonzero()
        if len(free):
            used[free[0, 0]] = True
            matched += 1
    return matched, len(reference)
