"""The multi-scale deformable attention module (Deformable-DETR / detrex semantics) on top of the op in
:mod:`focus_detr.layers.ms_deform_attn_op`. Shapes in :mod:`focus_detr.layers.ms_deform_attn_reference`."""
import dataclasses
import math
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .ms_deform_attn_backends import BACKENDS
from .ms_deform_attn_op import multi_scale_deformable_attention

__all__ = [
    "MultiScaleDeformableAttention", "SamplingReference", "box_offset_scale", "box_reference", "box_scale_rows",
    "per_point_rows", "point_reference", "sampling_locations",
]


@dataclasses.dataclass(frozen=True)
class SamplingReference:
    """Where a deformable attention samples around, as one row of ``L * P * 2`` values per query (each level's
    ``(x, y)`` pair repeated for its P points): the form its sampling locations are computed in. A caller that
    samples from the same references in several calls builds this once (:func:`point_reference`,
    :func:`box_reference`) instead of each call expanding its ``(B, Nq, L, k)`` references again.

    Attributes:
        origin: ``(B, Nq, L*P*2)`` the reference points, or the boxes' centres.
        extent: for points, each level's offset normaliser ``(w_l, h_l)`` as ``(1, 1, L*P*2)`` (offsets are in pixels
            of the level, divided by it); for boxes, their ``(w, h)`` times :func:`box_offset_scale` as
            ``(B, Nq, L*P*2)`` (offsets are in half box sizes over P, multiplied by it).
        boxes: whether the references are boxes.
    """

    origin: Tensor
    extent: Tensor
    boxes: bool


def per_point_rows(per_level: Tensor, num_points: int) -> Tensor:
    """``(..., L, 2)`` -> ``(..., L*P*2)``: each level's pair repeated for the P points, as contiguous rows.

    The sampling locations are computed on such rows rather than by broadcasting per-(level, point) factors over an
    innermost dimension of 2, which runs the element loop 2 at a time (about 9x slower); each element still sees the
    same operations in the same order."""
    expanded = per_level.unsqueeze(-2).expand(*([-1] * (per_level.dim() - 1)), num_points, -1)
    return expanded.flatten(-3)


def point_reference(reference_points: Tensor, spatial_shapes: Tensor, num_points: int) -> SamplingReference:
    """reference_points ``(B, Nq, L, 2)`` normalised ``(x, y)``; spatial_shapes ``(L, 2)`` integer ``(h, w)``."""
    normalizer = spatial_shapes.flip(-1).to(reference_points.device)  # (w_l, h_l), integer as the offsets divide
    return SamplingReference(
        per_point_rows(reference_points, num_points), per_point_rows(normalizer, num_points)[None, None], boxes=False
    )


def box_offset_scale(num_points: int) -> float:
    """What a box's size is multiplied by for the offsets around it: they are in half box sizes over P. For P a
    power of two the scale is a power of two, and ``offsets * (size * 0.5 / P)`` rounds exactly as the official
    ``offsets / P * size * 0.5`` does; for other P it may differ in the last bit."""
    return 0.5 / num_points


def box_scale_rows(level_scales: Tensor, num_points: int) -> Tensor:
    """level_scales ``(B, L, 2)`` each level's ``(w, h)`` scale of the normalised boxes (the valid ratios of a padded
    image) -> ``(B, 1, 2, L*P*2)`` what :func:`box_reference` multiplies the repeated box centres (row 0) and sizes
    (row 1) by: the sizes also by :func:`box_offset_scale`, so that a location is one product and one sum."""
    rows = per_point_rows(level_scales, num_points)
    return torch.stack([rows, rows * box_offset_scale(num_points)], 1)[:, None]


def box_reference(boxes: Tensor, scale_rows: Tensor) -> SamplingReference:
    """boxes ``(B, Nq, 4)`` normalised ``(cx, cy, w, h)``, each level's box being ``boxes`` times that level's scale;
    scale_rows ``(B, 1, 2, L*P*2)`` from :func:`box_scale_rows`.

    Repeating the box and scaling it per row gives the same values as scaling it per level and expanding."""
    repeats = scale_rows.shape[-1] // 2
    pairs = boxes.reshape(*boxes.shape[:-1], 2, 2)  # (B, Nq, [centre, size], 2)
    origin, extent = (pairs.repeat(1, 1, 1, repeats) * scale_rows).unbind(-2)
    return SamplingReference(origin, extent, boxes=True)


def sampling_locations(reference: SamplingReference, offsets: Tensor) -> Tensor:
    """offsets ``(B * Nq, H, L*P*2)`` as the sampling-offset projection gives them -> the normalised sampling
    locations ``(B * Nq, H, L*P*2)``: around the points, offsets in pixels of each level; around the boxes, in half
    box sizes over P."""
    rows, width = offsets.shape[0], offsets.shape[-1]  # not -1 in reshape: no queries (rows 0) leave it undefined
    origin = reference.origin.reshape(rows, 1, width)
    if reference.boxes:
        # not addcmul: its fused multiply-add rounds once where the official formula rounds twice
        return origin + offsets * reference.extent.reshape(rows, 1, width)
    return origin + offsets / reference.extent


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention of queries over a multi-level feature pyramid (Deformable-DETR / detrex semantics).

    Parameter names, shapes and initialisation follow the official module, so official checkpoints load unchanged:
    ``sampling_offsets`` Linear(E, H*L*P*2), ``attention_weights`` Linear(E, H*L*P), ``value_proj`` Linear(E, E),
    ``output_proj`` Linear(E, E).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.0,
        im2col_step: int = 64,
        backend: Optional[str] = None,
    ):
        """
        Args:
            embed_dim: E, channels of query and value; must be divisible by ``num_heads``.
            num_heads, num_levels, num_points: H, L, P.
            dropout: dropout on the projected output (before the residual).
            im2col_step: forwarded to the op (compatibility only).
            backend: force an op backend (see :func:`select_backend`); None = env var / automatic.
        """
        super().__init__()
        sizes = {"embed_dim": embed_dim, "num_heads": num_heads, "num_levels": num_levels, "num_points": num_points,
                 "im2col_step": im2col_step}
        for name, size in sizes.items():
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                raise ValueError(f"MultiScaleDeformableAttention: {name} must be a positive integer, got {size!r}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if backend is not None and (not isinstance(backend, str) or backend.strip().lower() not in BACKENDS):
            raise ValueError(f"MultiScaleDeformableAttention: backend must be one of {BACKENDS} or None (automatic), "
                             f"got {backend!r}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.im2col_step = im2col_step
        self.backend = backend
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official init; public so a model can re-apply it after a global xavier pass.

        Offsets start on a star: head h points along angle 2*pi*h/H (scaled to the unit square's border), point p at
        (p + 1) times that, same for every level. The bias is filled in place (the official code swaps in a new
        Parameter with the same values), so optimisers and the device/dtype of the module are kept.
        """
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        for point in range(self.num_points):
            grid[:, :, point, :] *= point + 1
        self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        value: Optional[Tensor],
        reference_points: Union[Tensor, SamplingReference],
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        query_pos: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
        identity: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: ``(B, Nq, E)``.
            value: ``(B, Nv, E)`` flattened pyramid (levels concatenated); None means ``query``.
            reference_points: ``(B, Nq, L, 2)`` normalised ``(x, y)`` points, or ``(B, Nq, L, 4)`` boxes
                ``(cx, cy, w, h)``; offsets are scaled by the level size resp. by half the box size / P. Or the
                same as a :class:`SamplingReference`.
            spatial_shapes: ``(L, 2)`` integer ``(h, w)``; level_start_index: ``(L,)``.
            query_pos: ``(B, Nq, E)`` added to ``query`` for offsets/weights only.
            key_padding_mask: ``(B, Nv)`` bool, True = padding; padded value tokens are zeroed.
            identity: residual, ``(B, Nq, E)``; defaults to ``query`` before ``query_pos`` is added.
        Returns:
            ``identity + dropout(output_proj(msda(...)))``, ``(B, Nq, E)``.
        """
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not torch.jit.is_tracing():
            self._check_forward_inputs(query, value, reference_points, spatial_shapes, key_padding_mask)
        if not isinstance(reference_points, SamplingReference):
            reference_points = self.sampling_reference(reference_points, spatial_shapes)
        batch, num_queries, _ = query.shape
        num_values = value.shape[1]
        heads, levels, points = self.num_heads, self.num_levels, self.num_points

        # Projected as (B * Nv, E): the result is then its own tensor, not a view of one, so the in-place masking
        # below is, for autograd, a plain masked fill (a view's in-place update would make the backward rebuild the
        # whole buffer: a zero fill and a copy of (B, Nv, E) each).
        value = self.value_proj(value.reshape(batch * num_values, self.embed_dim))
        if key_padding_mask is not None:
            # In place on the fresh projection (its backward does not read it): no second (B, Nv, E) buffer.
            value = value.masked_fill_(key_padding_mask.reshape(batch * num_values, 1), 0.0)
        value = value.view(batch, num_values, heads, self.embed_dim // heads)
        query_rows = query.reshape(batch * num_queries, self.embed_dim)  # 2-D: each Linear is one matrix product
        # offsets (B*Nq, H, L*P*2) against the per-query rows of the reference (see per_point_rows)
        offsets = self.sampling_offsets(query_rows).view(batch * num_queries, heads, levels * points * 2)
        weights = self.attention_weights(query_rows).view(batch, num_queries, heads, levels * points)
        # bfloat16 / float16 logits (autocast) get a float32 softmax: the kernels read the weights in float32 anyway,
        # and PyTorch's reduced-precision CPU softmax over these short rows is 4x slower (CUDA autocast does this too)
        weights_dtype = torch.float32 if weights.dtype in (torch.bfloat16, torch.float16) else None
        weights = weights.softmax(-1, dtype=weights_dtype).view(batch, num_queries, heads, levels, points)
        locations = sampling_locations(reference_points, offsets).view(batch, num_queries, heads, levels, points, 2)
        output = multi_scale_deformable_attention(
            value.contiguous(),
            spatial_shapes,
            level_start_index,
            locations.contiguous(),
            weights.contiguous(),
            self.im2col_step,
            self.backend,
        )
        output = self.output_proj(output)
        return self.dropout(output) + identity

    def sampling_reference(self, reference_points: Tensor, spatial_shapes: Tensor) -> SamplingReference:
        """``(B, Nq, L, 2)`` points or ``(B, Nq, L, 4)`` boxes (see :meth:`forward`) as a :class:`SamplingReference`
        for this module's number of points."""
        if reference_points.shape[-1] == 2:
            return point_reference(reference_points, spatial_shapes, self.num_points)
        return SamplingReference(
            per_point_rows(reference_points[..., :2], self.num_points),
            per_point_rows(reference_points[..., 2:], self.num_points) * box_offset_scale(self.num_points),
            boxes=True,
        )

    def _check_forward_inputs(self, query, value, reference_points, spatial_shapes, key_padding_mask) -> None:
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"query must be (B, Nq, {self.embed_dim}), got {tuple(query.shape)}")
        if value.dim() != 3 or value.shape[-1] != self.embed_dim or value.shape[0] != query.shape[0]:
            raise ValueError(f"value must be (B={query.shape[0]}, Nv, {self.embed_dim}), got {tuple(value.shape)}")
        if isinstance(reference_points, SamplingReference):
            rows = (query.shape[0], query.shape[1], self.num_levels * self.num_points * 2)
            extent = rows if reference_points.boxes else (1, 1, rows[2])
            if tuple(reference_points.origin.shape) != rows or tuple(reference_points.extent.shape) != extent:
                raise ValueError(
                    f"reference_points: a SamplingReference for {rows[:2]} queries, {self.num_levels} levels and "
                    f"{self.num_points} points needs rows {rows} and {extent}, got "
                    f"{tuple(reference_points.origin.shape)} and {tuple(reference_points.extent.shape)}"
                )
        else:
            expected = (query.shape[0], query.shape[1], self.num_levels)
            if (
                reference_points.dim() != 4
                or tuple(reference_points.shape[:3]) != expected
                or reference_points.shape[-1] not in (2, 4)
            ):
                raise ValueError(
                    f"reference_points must be {expected + (2,)} points or {expected + (4,)} boxes, "
                    f"got {tuple(reference_points.shape)}"
                )
        if spatial_shapes.dim() != 2 or tuple(spatial_shapes.shape) != (self.num_levels, 2):
            raise ValueError(f"spatial_shapes must be ({self.num_levels}, 2), got {tuple(spatial_shapes.shape)}")
        if key_padding_mask is not None:
            if key_padding_mask.dtype != torch.bool:
                raise ValueError(f"key_padding_mask must be bool (True = padding), got {key_padding_mask.dtype}")
            if tuple(key_padding_mask.shape) != tuple(value.shape[:2]):
                raise ValueError(
                    f"key_padding_mask must be (B, Nv) = {tuple(value.shape[:2])}, got {tuple(key_padding_mask.shape)}"
                )

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_levels={self.num_levels}, "
            f"num_points={self.num_points}"
        )
