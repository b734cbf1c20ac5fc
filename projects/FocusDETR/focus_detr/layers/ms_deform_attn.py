"""The multi-scale deformable attention module (Deformable-DETR / detrex semantics) on top of the op in
:mod:`focus_detr.layers.ms_deform_attn_op`. Shapes in :mod:`focus_detr.layers.ms_deform_attn_reference`."""
import math
from typing import Optional

import torch
from torch import Tensor, nn

from .ms_deform_attn_op import multi_scale_deformable_attention

__all__ = ["MultiScaleDeformableAttention"]


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
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if min(num_heads, num_levels, num_points) <= 0:
            raise ValueError(
                f"num_heads, num_levels, num_points must be positive, got {num_heads}, {num_levels}, {num_points}"
            )
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
        reference_points: Tensor,
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
                ``(cx, cy, w, h)``; offsets are scaled by the level size resp. by half the box size / P.
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
        offsets = self.sampling_offsets(query_rows).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query_rows).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        # The per-(level, point) factors are expanded to rows of L * P * 2 before the elementwise ops: broadcasting
        # them over an innermost dimension of 2 runs the element loop 2 at a time (about 9x slower); each element
        # still sees the same operations in the same order.
        offsets = offsets.view(batch * num_queries, heads, levels * points * 2)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by (w_l, h_l)
            normalizer = spatial_shapes.flip(-1).to(offsets.device).view(levels, 1, 2)  # (w_l, h_l)
            locations = self._per_point(reference_points, 0, 2) + offsets / self._per_point(normalizer, 0, 2)
        else:
            corner = self._per_point(reference_points, 0, 2)
            locations = corner + offsets / points * self._per_point(reference_points, 2, 4) * 0.5
        locations = locations.view(batch, num_queries, heads, levels, points, 2)
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

    def _per_point(self, per_level: Tensor, start: int, stop: int) -> Tensor:
        """``per_level[..., start:stop]`` (``(L, 1, 2)`` or ``(B, Nq, L, k)``, ``stop - start == 2``) repeated over
        the P points as contiguous rows: ``(1, 1, L*P*2)`` resp. ``(B*Nq, 1, L*P*2)``."""
        levels, points = self.num_levels, self.num_points
        rows = per_level.reshape(-1, levels, 1, per_level.shape[-1])[..., start:stop]
        return rows.expand(-1, levels, points, 2).reshape(-1, 1, levels * points * 2)

    def _check_forward_inputs(self, query, value, reference_points, spatial_shapes, key_padding_mask) -> None:
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"query must be (B, Nq, {self.embed_dim}), got {tuple(query.shape)}")
        if value.dim() != 3 or value.shape[-1] != self.embed_dim or value.shape[0] != query.shape[0]:
            raise ValueError(f"value must be (B={query.shape[0]}, Nv, {self.embed_dim}), got {tuple(value.shape)}")
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
