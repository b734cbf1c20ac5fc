"""Box format conversions and pairwise box metrics. Boxes are ``(..., 4)`` tensors."""
import torch


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Logit of ``x`` clamped to ``[0, 1]``; numerator and denominator are clamped at ``eps`` so 0 and 1 stay finite."""
    # clamp(clamp(x, 0, 1), eps) = clamp(x, eps, 1) and clamp(1 - clamp(x, 0, 1), eps) = clamp(1 - x, eps, 1) for
    # eps < 1, values and gradients alike: one operator less than clamping x first
    return torch.log(x.clamp(min=eps, max=1) / (1 - x).clamp(min=eps, max=1))


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``(N, 4)`` xyxy boxes -> ``(N,)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-6):
    """Pairwise IoU and union of ``(N, 4)`` and ``(M, 4)`` xyxy boxes -> ``(N, M)``, ``(N, M)``."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / (union + eps), union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pairwise generalised IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes -> ``(N, M)``.

    Raises ``ValueError`` for degenerate boxes (x2 < x1 or y2 < y1), which would otherwise give a silently wrong GIoU.
    """
    ordered = [(boxes[:, 2:] >= boxes[:, :2]).all() for boxes in (boxes1, boxes2)]
    if not bool(ordered[0] & ordered[1]):  # one device read for both
        name = "boxes1" if not bool(ordered[0]) else "boxes2"
        raise ValueError(f"generalized_box_iou: {name} has boxes with x2 < x1 or y2 < y1 (or NaN coordinates)")
    iou, union = box_iou(boxes1, boxes2, eps)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / (enclosing + eps)
