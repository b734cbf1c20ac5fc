"""Sine position embeddings for feature maps and for box coordinates."""
import functools
import math
from typing import Tuple

import torch
from torch import nn


@functools.lru_cache(maxsize=16)
def _sine_frequencies(num_feats: int, temperature: float, device: torch.device) -> torch.Tensor:
    """The ``num_feats / 2`` distinct ``temperature ** (2 * floor(i / 2) / num_feats)`` of ``i < num_feats`` (features
    2j and 2j + 1 share one: the sine and the cosine of the same angle) -> ``(num_feats / 2,)`` float32, made once per
    setting and device (shared: never modify it; a plain tensor even if first made under inference mode)."""
    with torch.inference_mode(False):
        dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
        return (temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats))[0::2].contiguous()


@functools.lru_cache(maxsize=16)
def _yx_first(num_coords: int, device: torch.device) -> torch.Tensor:
    """The coordinate order ``(y, x, w, h)`` of ``(x, y, w, h)`` (``(y, x)`` of ``(x, y)``) as an index, made once
    per device (shared: never modify it)."""
    with torch.inference_mode(False):
        return torch.tensor([1, 0, 2, 3][:num_coords], device=device)


def _sin_cos(angles: torch.Tensor) -> torch.Tensor:
    """``(..., F/2)`` angles -> ``(..., F/2, 2)``: the sine and the cosine of each, interleaved once flattened."""
    return torch.stack((angles.sin(), angles.cos()), dim=-1)


class PositionEmbeddingSine(nn.Module):
    """The DETR sine embedding of pixel positions, normalised over the valid (unpadded) extent of each image.

    Args:
        num_pos_feats: features per axis; the output has ``2 * num_pos_feats`` channels (y first, then x).
        temperature: the frequency base.
        normalize: scale positions to ``[0, scale]`` over the valid extent.
        scale: the normalised range (``2 * pi``).
        offset: added to the 1-based cumulative position before normalising (-0.5 puts positions at pixel centres).
        eps: keeps the normaliser non-zero.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        offset: float = 0.0,
        eps: float = 1e-6,
    ):
        super().__init__()
        if num_pos_feats <= 0 or num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be a positive even number, got {num_pos_feats}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if normalize and not scale > 0:  # 0 gives every token one position; a negative scale mirrors them
            raise ValueError(f"scale must be positive when normalize=True, got {scale}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.offset = offset
        self.eps = eps

    @property
    def settings(self) -> Tuple:
        """The constructor arguments, in order: ``PositionEmbeddingSine(*e.settings)`` embeds like ``e``."""
        return (self.num_pos_feats, self.temperature, self.normalize, self.scale, self.offset, self.eps)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask ``(B, H, W)`` bool, True = padding -> ``(B, 2 * num_pos_feats, H, W)``."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        dim_t = _sine_frequencies(self.num_pos_feats, self.temperature, mask.device)
        pos_x = _sin_cos(x_embed[..., None] / dim_t).flatten(-2)
        pos_y = _sin_cos(y_embed[..., None] / dim_t).flatten(-2)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def box_sine_embedding(boxes: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0) -> torch.Tensor:
    """Sine embedding of normalised ``(..., 4)`` cxcywh boxes (or ``(..., 2)`` points) -> ``(..., 4 * num_feats)``.

    Coordinates are embedded as ``(y, x, w, h)``: y before x, matching the feature-map embedding's channel order.
    """
    if boxes.shape[-1] not in (2, 4):
        raise ValueError(f"boxes must end in 2 or 4 coordinates, got shape {tuple(boxes.shape)}")
    dim_t = _sine_frequencies(num_feats, temperature, boxes.device)
    # every coordinate at once, y first: (..., D, num_feats / 2) angles -> (..., D * num_feats)
    ordered = boxes.index_select(-1, _yx_first(boxes.shape[-1], boxes.device))
    return _sin_cos((ordered * (2 * math.pi))[..., None] / dim_t).flatten(-3)
