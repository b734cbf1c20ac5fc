"""What a transformer pass derives from the image sizes alone: padding masks per level, sine position embeddings,
the level layout, valid ratios, encoder reference points, token proposals and the number of valid tokens per image.

None of it depends on pixel values, and the image sizes are Python ints on the host, so in eager mode
:func:`token_layout` builds it once per input size and reuses it: the per-image forward then neither recomputes these
tensors (about 300 small operators for R50) nor reads anything back from the device to learn its token counts (the
first call at a size reads them once). Under ``torch.jit.trace`` the sizes are graph values and the layout is built
in the graph on every call, so an exported model follows the input size.
"""
import dataclasses
import functools
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..layers.position_embedding import PositionEmbeddingSine
from ..layers.traced_shapes import spatial_shapes_of

__all__ = ["TokenLayout", "token_layout", "build_token_layout", "encoder_reference_points", "token_proposals"]

# Input sizes whose layouts are kept (least recently used first out): a batch-1 R50 layout at 800x1333 holds ~25 MB,
# mostly its (1, N, 256) position embeddings.
LAYOUT_CACHE_SIZE = 4


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """The size-only tensors of one padded batch (N tokens over L levels). Shared between calls: read, never modify.

    Attributes:
        spatial_shapes_list: per level ``(h, w)`` (Python ints; graph values under tracing).
        spatial_shapes: ``(L, 2)`` int64; level_start_index: ``(L,)`` int64.
        padding_mask: ``(B, N)`` bool, True = padding.
        valid_ratios: ``(B, L, 2)`` valid fraction ``(w, h)`` of each level.
        reference_points: ``(B, N, L, 2)`` the encoder's reference points.
        position_embeddings: ``(B, N, C)`` sine embeddings (the level embeddings are the transformer's to add).
        level_ids: ``(N,)`` int64, each token's level.
        proposals: ``(B, N, 4)`` token proposals in inverse-sigmoid space (:func:`token_proposals`).
        proposal_ignored: ``(B, N, 1)`` bool, tokens the two-stage head ignores (padded or too close to the border).
        valid_token_nums: unpadded tokens per image (Python ints), None under tracing.
        any_padding: whether any token is padding (True under tracing: the graph cannot know).
    """

    spatial_shapes_list: List[Tuple[int, int]]
    spatial_shapes: Tensor
    level_start_index: Tensor
    padding_mask: Tensor
    valid_ratios: Tensor
    reference_points: Tensor
    position_embeddings: Tensor
    level_ids: Tensor
    proposals: Tensor
    proposal_ignored: Tensor
    valid_token_nums: Optional[Tuple[int, ...]]
    any_padding: bool


def valid_extent(mask: Tensor) -> Tuple[Tensor, Tensor]:
    """mask ``(B, h, w)`` True = padding (images are top-left aligned) -> valid rows ``(B,)`` and columns ``(B,)``."""
    return (~mask[:, :, 0]).sum(1), (~mask[:, 0, :]).sum(1)


def valid_ratios_of(mask: Tensor) -> Tensor:
    """mask ``(B, h, w)`` True = padding -> ``(B, 2)`` valid fraction ``(w, h)`` of the level."""
    _, h, w = mask.shape
    valid_h, valid_w = valid_extent(mask)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)


def encoder_reference_points(spatial_shapes: Sequence[Tuple[int, int]], valid_ratios: Tensor) -> Tensor:
    """Pixel centres of every token, normalised by the valid extent -> ``(B, N, L, 2)`` (x, y) per level."""
    points = []
    for level, (h, w) in enumerate(spatial_shapes):
        # arange, not linspace: the same values, but ONNX's linspace divides by (steps - 1), NaN for a 1-token side
        ref_y, ref_x = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=valid_ratios.device) + 0.5,
            torch.arange(w, dtype=torch.float32, device=valid_ratios.device) + 0.5,
            indexing="ij",
        )
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * w)
        points.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]


def token_proposals(
    padding_mask: Tensor, spatial_shapes: Sequence[Tuple[int, int]], base_size: float
) -> Tuple[Tensor, Tensor]:
    """One box per token centred on it, ``base_size * 2**level`` wide, in inverse-sigmoid space.

    padding_mask ``(B, N)``. Returns proposals ``(B, N, 4)`` (+inf where padded or too close to the border) and
    the validity ``(B, N, 1)`` bool.
    """
    batch_size = padding_mask.shape[0]
    proposals, start = [], 0
    for level, (h, w) in enumerate(spatial_shapes):
        valid_h, valid_w = valid_extent(padding_mask[:, start : start + h * w].view(batch_size, h, w))
        grid_y, grid_x = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=padding_mask.device),
            torch.arange(w, dtype=torch.float32, device=padding_mask.device),
            indexing="ij",
        )
        grid = torch.cat([grid_x[..., None], grid_y[..., None]], -1)
        scale = torch.cat([valid_w[:, None], valid_h[:, None]], 1).view(batch_size, 1, 1, 2)
        grid = (grid[None].expand(batch_size, -1, -1, -1) + 0.5) / scale
        size = torch.ones_like(grid) * base_size * (2.0**level)
        proposals.append(torch.cat((grid, size), -1).view(batch_size, -1, 4))
        start += h * w
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding_mask[..., None], float("inf")).masked_fill(~valid, float("inf"))
    return proposals, valid


def image_padding_masks(padded_size, image_sizes, device) -> Tensor:
    """``(B, H, W)`` bool, True outside each image's own size (images top-left aligned in the padded batch).
    image_sizes: ``(h, w)`` per image, or a ``(B, 2)`` int64 tensor (the input of a batched exported graph, where the
    batch size is a graph value too)."""
    height, width = padded_size
    if isinstance(image_sizes, Tensor):
        rows = torch.arange(height, device=device)[None, :, None] >= image_sizes[:, 0, None, None]
        return rows | (torch.arange(width, device=device)[None, None, :] >= image_sizes[:, 1, None, None])
    masks = torch.ones((len(image_sizes), height, width), dtype=torch.bool, device=device)
    for i, (h, w) in enumerate(image_sizes):
        masks[i, :h, :w] = False
    return masks


def level_padding_masks(image_masks: Tensor, level_shapes: Sequence[Tuple[int, int]]) -> List[Tensor]:
    """image_masks ``(B, H, W)`` -> per level ``(B, h_l, w_l)``: the mask resized as ``F.interpolate(mode="nearest")``
    resizes it (source index ``floor(i * float32(H / h_l))``), written out so that an exported graph computes the
    same: ONNX's ``Resize`` divides by the inverse scale instead, which put ``floor(4 / float32(8 / 480)) = 239``
    inside a 240-row image where PyTorch's ``4 * 60 = 240`` is outside. The source indices are computed on the CPU
    (no device value is read) from the sizes, graph values when traced."""
    sizes = torch._shape_as_tensor(image_masks)[1:]  # (H, W) on the CPU
    shapes = spatial_shapes_of(level_shapes, "cpu")
    scales = sizes.float() / shapes.float()  # (L, 2) float32, as interpolate's input / output size

    def source_indices(level, dim):
        positions = torch.arange(shapes[level, dim]).float()
        indices = torch.minimum((positions * scales[level, dim]).floor().long(), sizes[dim] - 1)
        return indices.to(image_masks.device)

    return [
        image_masks[:, source_indices(level, 0)][:, :, source_indices(level, 1)] for level in range(len(level_shapes))
    ]


def build_token_layout(
    image_sizes: Sequence[Tuple[int, int]],
    padded_size: Tuple[int, int],
    level_shapes: Sequence[Tuple[int, int]],
    position_embedding: PositionEmbeddingSine,
    proposal_base_size: float,
    device,
) -> TokenLayout:
    """The :class:`TokenLayout` of a batch of images of ``image_sizes`` padded to ``padded_size``, whose feature
    levels have ``level_shapes``. Sizes are Python ints, or graph values under ``torch.jit.trace`` (``image_sizes``
    then also a ``(B, 2)`` tensor, see :func:`image_padding_masks`)."""
    image_masks = image_padding_masks(padded_size, image_sizes, device)
    masks = level_padding_masks(image_masks, level_shapes)
    position_embeddings = torch.cat([position_embedding(m).flatten(2).transpose(1, 2) for m in masks], 1)
    padding_mask = torch.cat([m.flatten(1) for m in masks], 1)
    level_ids = torch.cat([torch.full_like(m[0].flatten(), level, dtype=torch.int64) for level, m in enumerate(masks)])
    spatial_shapes = spatial_shapes_of(level_shapes, device)
    level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
    valid_ratios = torch.stack([valid_ratios_of(m) for m in masks], 1)
    proposals, valid = token_proposals(padding_mask, level_shapes, proposal_base_size)
    tracing = torch.jit.is_tracing()
    valid_token_nums = None if tracing else tuple((~padding_mask).sum(-1).tolist())
    return TokenLayout(
        spatial_shapes_list=list(level_shapes),
        spatial_shapes=spatial_shapes,
        level_start_index=level_start_index,
        padding_mask=padding_mask,
        valid_ratios=valid_ratios,
        reference_points=encoder_reference_points(level_shapes, valid_ratios),
        position_embeddings=position_embeddings,
        level_ids=level_ids,
        proposals=proposals,
        proposal_ignored=padding_mask[..., None] | ~valid,
        valid_token_nums=valid_token_nums,
        any_padding=tracing or any(n < padding_mask.shape[1] for n in valid_token_nums),
    )


@functools.lru_cache(maxsize=LAYOUT_CACHE_SIZE)
def _cached_token_layout(image_sizes, padded_size, level_shapes, position_settings, proposal_base_size, device):
    # Plain tensors even when first built under torch.inference_mode (training may use them later), and outside any
    # autograd graph: nothing here is learnt.
    with torch.inference_mode(False), torch.no_grad():
        return build_token_layout(
            image_sizes, padded_size, level_shapes, PositionEmbeddingSine(*position_settings), proposal_base_size,
            device,
        )


def token_layout(
    image_sizes: Sequence[Tuple[int, int]],
    padded_size: Tuple[int, int],
    level_shapes: Sequence[Tuple[int, int]],
    position_embedding: PositionEmbeddingSine,
    proposal_base_size: float,
    device,
) -> TokenLayout:
    """:func:`build_token_layout`, reused for the last :data:`LAYOUT_CACHE_SIZE` distinct sizes in eager mode."""
    if torch.jit.is_tracing():
        return build_token_layout(image_sizes, padded_size, level_shapes, position_embedding, proposal_base_size, device)
    return _cached_token_layout(
        tuple((int(h), int(w)) for h, w in image_sizes),
        tuple(int(s) for s in padded_size),
        tuple((int(h), int(w)) for h, w in level_shapes),
        position_embedding.settings,
        float(proposal_base_size),
        torch.device(device),
    )
