"""Foreground supervision of the Foreground Token Selector: per-token binary targets and their focal loss (spec 5)."""

import functools
from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.box_ops import box_cxcywh_to_xyxy
from .token_layout import LAYOUT_CACHE_SIZE


class ForegroundTargetAssigner(nn.Module):
    """Multi-scale label assignment: which tokens of the flattened feature pyramid lie on an object.

    A token of level l (stride s) at (row, col) has its centre at ``(col*s + s//2, row*s + s//2)`` input pixels on the
    padded canvas (images are top-left aligned, so this is also the image frame). It is a positive (target 1) when,
    for at least one GT box, the centre lies strictly inside the box and the largest centre-to-side distance
    ``max(l, t, r, b)`` falls in the level's range ``(lo, hi]`` (FCOS scale assignment, no centre sampling).
    Holds no parameters or buffers.
    """

    def __init__(
        self,
        strides: Sequence[int] = (8, 16, 32, 64),
        scale_ranges: Sequence[Tuple[float, float]] = ((-1, 64), (64, 128), (128, 256), (256, 999999)),
    ):
        super().__init__()
        strides = tuple(strides)
        scale_ranges = tuple(tuple(r) for r in scale_ranges)
        if len(strides) == 0:
            raise ValueError("ForegroundTargetAssigner: strides must not be empty")
        if any(not isinstance(s, int) or isinstance(s, bool) or s <= 0 for s in strides):
            raise ValueError(f"ForegroundTargetAssigner: strides must be positive ints, got {strides}")
        if len(scale_ranges) != len(strides):
            raise ValueError(
                f"ForegroundTargetAssigner: scale_ranges has {len(scale_ranges)} entries but strides has {len(strides)}"
            )
        for low_high in scale_ranges:
            if len(low_high) != 2 or not low_high[0] < low_high[1]:
                raise ValueError(
                    f"ForegroundTargetAssigner: each scale range must be (lo, hi) with lo < hi, got {low_high}"
                )
        # Finest level first, each range starting where the one before ends (or overlapping it): a reversed list
        # labels large objects on the finest level, and a gap leaves objects of its sizes background on every level,
        # both trained on without a word.
        for (low, high), (next_low, next_high) in zip(scale_ranges, scale_ranges[1:]):
            if not (low <= next_low <= high and next_high >= high):
                why = f"leaves object sizes {(high, next_low)} on no level" if next_low > high else "goes back"
                raise ValueError(
                    f"ForegroundTargetAssigner: scale_ranges must run from the finest level to the coarsest, each "
                    f"(lo, hi) starting where the one before ends: ({low}, {high}) then ({next_low}, {next_high}) {why}"
                )
        self.strides = strides
        self.scale_ranges = scale_ranges

    def extra_repr(self) -> str:
        return f"strides={self.strides}, scale_ranges={self.scale_ranges}"

    @torch.no_grad()
    def forward(
        self, spatial_shapes: Union[Tensor, Sequence[Tuple[int, int]]], targets: List[Dict[str, Tensor]], device=None
    ) -> Tensor:
        """
        Args:
            spatial_shapes: (h, w) of each level, L == len(strides): Python ints (the model's, read from nothing),
                or an (L, 2) integer tensor.
            targets: B dicts with "boxes" (n, 4) cxcywh normalised by "image_size" (h, w) of the unpadded input.
            device: where the targets are built (default: spatial_shapes' device, the CPU for Python ints).
        Returns:
            (B, N) float32 targets in {0, 1}, N = sum(h*w), same token order as the flattened features.

        With Python shapes nothing is read from or copied to the device: the token grid is built once per layout
        (:data:`~focus_detr.modeling.token_layout.LAYOUT_CACHE_SIZE` kept) and the boxes are scaled on the device.
        """
        if isinstance(spatial_shapes, Tensor) and (spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2):
            raise ValueError(
                f"ForegroundTargetAssigner: spatial_shapes must be (L, 2), got {tuple(spatial_shapes.shape)}"
            )
        level_shapes, device = _level_shapes(spatial_shapes, device)
        if len(level_shapes) != len(self.strides):
            raise ValueError(
                f"ForegroundTargetAssigner: spatial_shapes has {len(level_shapes)} levels but "
                f"{len(self.strides)} strides are configured"
            )
        x, y, low, high = _token_grid(level_shapes, self.strides, self.scale_ranges, device)
        foreground = torch.zeros(len(targets), x.numel(), dtype=torch.float32, device=device)
        for b, target in enumerate(targets):
            boxes = target["boxes"]
            if boxes.dim() != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"ForegroundTargetAssigner: target {b} boxes must be (n, 4), got {tuple(boxes.shape)}")
            if boxes.shape[0] == 0:
                continue
            if "image_size" not in target:
                raise ValueError(f"ForegroundTargetAssigner: target {b} has no 'image_size' (h, w)")
            h, w = (int(v) for v in target["image_size"])
            scale = torch.full((4,), w, dtype=torch.float32, device=device)  # (w, h, w, h) without a host copy
            scale[1::2].fill_(h)
            boxes_abs = box_cxcywh_to_xyxy(boxes.to(device=device, dtype=torch.float32) * scale)  # (n, 4)
            left = x[:, None] - boxes_abs[None, :, 0]  # (N, n)
            top = y[:, None] - boxes_abs[None, :, 1]
            right = boxes_abs[None, :, 2] - x[:, None]
            bottom = boxes_abs[None, :, 3] - y[:, None]
            # min(l, t, r, b) > 0 and max(l, t, r, b) without materialising an (N, n, 4) stack
            inside = (left > 0) & (top > 0) & (right > 0) & (bottom > 0)
            largest = torch.maximum(torch.maximum(left, top), torch.maximum(right, bottom))
            in_level = (largest > low[:, None]) & (largest <= high[:, None])
            foreground[b] = (inside & in_level).any(dim=1).float()
        return foreground


def _level_shapes(spatial_shapes, device) -> Tuple[Tuple[Tuple[int, int], ...], torch.device]:
    """(h, w) per level as Python ints and the device to build on (``device``, else the tensor's, else the CPU).
    Reads a tensor's values: one device read when it lives on a GPU."""
    if isinstance(spatial_shapes, Tensor):
        device = spatial_shapes.device if device is None else device
        spatial_shapes = spatial_shapes.tolist()
    shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    return shapes, torch.device("cpu" if device is None else device)


@functools.lru_cache(maxsize=LAYOUT_CACHE_SIZE)
def _token_grid(level_shapes, strides, scale_ranges, device) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """x, y (N,) float32 token centres in input pixels (flattened order: level-major, row-major inside a level) and
    each token's level range low, high (N,). Shared between calls: read, never modify."""
    # Plain tensors even when first built under torch.inference_mode, outside any autograd graph.
    with torch.inference_mode(False), torch.no_grad():
        xs, ys, lows, highs = [], [], [], []
        for (h, w), stride, (low, high) in zip(level_shapes, strides, scale_ranges):
            # same construction as the official code: arange(0, w*s, s) + s//2 in float32
            shift_x = torch.arange(0, w * stride, stride, dtype=torch.float32, device=device)
            shift_y = torch.arange(0, h * stride, stride, dtype=torch.float32, device=device)
            grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
            xs.append(grid_x.reshape(-1) + stride // 2)
            ys.append(grid_y.reshape(-1) + stride // 2)
            lows.append(torch.full((h * w,), low, dtype=torch.float32, device=device))
            highs.append(torch.full((h * w,), high, dtype=torch.float32, device=device))
        return tuple(torch.cat(parts) for parts in (xs, ys, lows, highs))


def foreground_focal_loss(
    foreground_logits: Tensor, foreground_targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Sigmoid focal loss of the foreground scores, as the official ``select_loss`` (before its weight).

    Per image: ``sum over ALL N tokens (padding included) of -w (1-pt)^gamma log(pt)`` divided by
    ``max(#positives, 1)``; then the mean over images. ``w = alpha`` on positives, ``1 - alpha`` on negatives.

    Deviation from the official code: where ``pt`` is exactly 0 in floating point (a confidently wrong token, e.g. a
    negative with logit > ~16.6 in float32, much less in float16) the official ``log(pt)`` gives an infinite loss.
    Here such entries use the equivalent stable form ``log(pt) = -BCE_with_logits(logit, target)``. Everywhere
    else the official formula is evaluated unchanged, so the value is identical where the official one is finite.

    Args:
        foreground_logits: (B, N, 1) or (B, N) raw (unmasked) foreground logits.
        foreground_targets: (B, N) targets in {0, 1}.
    Returns:
        scalar tensor.
    """
    if foreground_logits.dim() == 3:
        if foreground_logits.shape[-1] != 1:
            raise ValueError(
                f"foreground_focal_loss: foreground_logits must be (B, N, 1), got {tuple(foreground_logits.shape)}"
            )
        foreground_logits = foreground_logits.squeeze(-1)
    if foreground_logits.shape != foreground_targets.shape:
        raise ValueError(
            f"foreground_focal_loss: logits {tuple(foreground_logits.shape)} and targets "
            f"{tuple(foreground_targets.shape)} must both be (B, N)"
        )
    targets = foreground_targets.to(foreground_logits.dtype)
    prob = foreground_logits.sigmoid()
    pt = prob * targets + (1.0 - prob) * (1.0 - targets)
    weight = alpha * targets + (1.0 - alpha) * (1.0 - targets)
    underflow = pt <= 0
    # log of a safe stand-in where pt == 0 keeps the backward free of 0 * inf = NaN
    log_pt = torch.where(
        underflow,
        -F.binary_cross_entropy_with_logits(foreground_logits, targets, reduction="none"),
        torch.log(torch.where(underflow, torch.ones_like(pt), pt)),
    )
    loss = -weight * torch.pow(1.0 - pt, gamma)
    loss = loss * log_pt
    num_positives = (foreground_targets > 0).sum(dim=1).clamp(min=1).to(loss.dtype)
    per_image = torch.stack([loss_b.sum() for loss_b in loss])
    return (per_image / num_positives).mean()
