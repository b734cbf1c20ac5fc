"""Box format conversions and pairwise box metrics. Boxes are ``(..., 4)`` tensors."""
import torch


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``."""
    centres, half_sizes = boxes[..., :2], 0.5 * boxes[..., 2:]
    return torch.cat([centres - half_sizes, centres + half_sizes], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``."""
    top_left, bottom_right = boxes[..., :2], boxes[..., 2:]
    return torch.cat([(top_left + bottom_right) / 2, bottom_right - top_left], dim=-1)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Logit of ``x`` clamped to ``[0, 1]``; numerator and denominator are clamped at ``eps`` so 0 and 1 stay finite."""
    # clamp(clamp(x, 0, 1), eps) = clamp(x, eps, 1) and clamp(1 - clamp(x, 0, 1), eps) = clamp(1 - x, eps, 1) for
    # eps < 1, values and gradients alike: one operator less than clamping x first
    return torch.log(x.clamp(min=eps, max=1) / (1 - x).clamp(min=eps, max=1))


def generalized_box_iou(
    boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-6, paired: bool = False, validate: bool = True
) -> torch.Tensor:
    """Generalised IoU of xyxy boxes: of every pair, ``(N, 4)`` and ``(M, 4)`` -> ``(N, M)``; with ``paired``, of
    the boxes element by element, shapes ``(..., 4)`` that broadcast -> ``(...)`` (e.g. ``(N, 4)`` and ``(N, 4)`` ->
    ``(N,)``, the diagonal of the former without the rest; ``(B, Q, 1, 4)`` and ``(B, 1, n, 4)`` -> ``(B, Q, n)``).

    Raises ``ValueError`` for degenerate boxes (x2 < x1 or y2 < y1), which would otherwise give a silently wrong GIoU.
    That check reads a value from the device; ``validate=False`` skips it for callers whose boxes are ordered by
    construction (and whose NaNs are caught downstream).
    """
    if not paired:
        boxes1, boxes2 = boxes1[:, None], boxes2[None]
    top_left1, bottom_right1 = boxes1[..., :2], boxes1[..., 2:]
    top_left2, bottom_right2 = boxes2[..., :2], boxes2[..., 2:]
    size1, size2 = bottom_right1 - top_left1, bottom_right2 - top_left2
    if validate:
        ordered = torch.stack([(size1 >= 0).all(), (size2 >= 0).all()])
        if not bool(ordered.all()):  # one device read for both
            name = "boxes1" if not bool(ordered[0]) else "boxes2"
            raise ValueError(f"generalized_box_iou: {name} has boxes with x2 < x1 or y2 < y1 (or NaN coordinates)")
    area1, area2 = size1[..., 0] * size1[..., 1], size2[..., 0] * size2[..., 1]
    overlap = (torch.min(bottom_right1, bottom_right2) - torch.max(top_left1, top_left2)).clamp(min=0)
    inter = overlap[..., 0] * overlap[..., 1]
    union = area1 + area2 - inter
    iou = inter / (union + eps)
    hull = (torch.max(bottom_right1, bottom_right2) - torch.min(top_left1, top_left2)).clamp(min=0)
    enclosing = hull[..., 0] * hull[..., 1]
    return iou - (enclosing - union) / (enclosing + eps)
