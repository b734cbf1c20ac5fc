"""Sizes and counts that stay graph values under ``torch.jit.trace``.

While tracing, ``tensor.shape[i]`` is a 0-dim tensor recorded in the graph. Python arithmetic on it (``min``,
``int``) would freeze the traced value into a constant, so an exported graph (``focus_detr.export``) would keep the
export image's token counts at every other size. These helpers give the same integers in eager mode and graph values
under tracing.
"""
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor


def capped_count(count: int, available: Union[int, Tensor]) -> Union[int, Tensor]:
    """``min(count, available)``; a 0-dim tensor when ``available`` is a traced size (e.g. the k of a ``topk``)."""
    if isinstance(available, Tensor):
        return available.clamp(max=count)
    return min(count, available)


def spatial_shapes_of(level_shapes: Sequence[Tuple[Union[int, Tensor], Union[int, Tensor]]], device) -> Tensor:
    """Per-level ``(h, w)`` -> ``(L, 2)`` int64 on ``device``: from Python ints, or from traced sizes (``f.shape[-2:]``
    under tracing, 0-dim tensors), which stay graph values."""
    if isinstance(level_shapes[0][0], Tensor):
        return torch.stack([torch.stack(list(shape)) for shape in level_shapes]).to(device)
    return torch.tensor(level_shapes, dtype=torch.int64, device=device)
