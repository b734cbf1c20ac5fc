"""Sizes and counts that stay graph values under ``torch.jit.trace``.

While tracing, ``tensor.shape[i]`` is a 0-dim tensor recorded in the graph. Python arithmetic on it (``min``,
``int``) would freeze the traced value into a constant, so an exported graph (``focus_detr.export``) would keep the
export image's token counts at every other size. These helpers give the same integers in eager mode and graph values
under tracing.
"""
from typing import List, Union

import torch
from torch import Tensor


def capped_count(count: int, available: Union[int, Tensor]) -> Union[int, Tensor]:
    """``min(count, available)``; a 0-dim tensor when ``available`` is a traced size (e.g. the k of a ``topk``)."""
    if isinstance(available, Tensor):
        return available.clamp(max=count)
    return min(count, available)


def spatial_shapes_of(features: List[Tensor]) -> Tensor:
    """Per-level ``(h, w)`` of ``(B, C, h, w)`` maps -> ``(L, 2)`` int64 on the maps' device, read from the shapes
    (traced shapes stay graph values)."""
    return torch.stack([torch._shape_as_tensor(f)[-2:] for f in features]).to(features[0].device)
