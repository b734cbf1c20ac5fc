"""The DINO decoder: self-attention among queries, deformable cross-attention to the encoder memory, and
iterative box refinement with look-forward-twice."""
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..layers.attention import MultiheadAttention
from ..layers.box_ops import inverse_sigmoid
from ..layers.mlp import FFN, MLP
from ..layers.ms_deform_attn import MultiScaleDeformableAttention, SamplingReference, box_reference, box_scale_rows
from ..layers.position_embedding import box_sine_embedding


class DINODecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention -> LN -> deformable cross-attention -> LN -> FFN -> LN.

    ``attn_dropout`` drops in the attention blocks (the self-attention's weights and output, the deformable
    attention's output), ``ffn_dropout`` in the feed-forward block: detrex's two settings."""

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        feedforward_dim: int = 2048,
        num_levels: int = 4,
        num_points: int = 4,
        attn_dropout: float = 0.0,
        ffn_dropout: float = 0.0,
    ):
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dim, num_heads, attn_dropout)
        self.self_attn_dropout = nn.Dropout(attn_dropout)
        self.self_attn_norm = nn.LayerNorm(embed_dim)
        self.cross_attn = MultiScaleDeformableAttention(embed_dim, num_heads, num_levels, num_points, attn_dropout)
        self.cross_attn_norm = nn.LayerNorm(embed_dim)
        self.ffn = FFN(embed_dim, feedforward_dim, ffn_dropout)
        self.ffn_norm = nn.LayerNorm(embed_dim)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_padding_mask: Optional[torch.Tensor],
        reference_boxes: Union[torch.Tensor, SamplingReference],
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """queries, query_pos ``(B, Q, C)``; memory ``(B, N, C)``, memory_padding_mask ``(B, N)``;
        reference_boxes ``(B, Q, L, 4)`` cxcywh per level, or their
        :class:`~focus_detr.layers.ms_deform_attn.SamplingReference`; attn_mask ``(Q, Q)`` bool, True = blocked."""
        with_pos = queries + query_pos
        attended = self.self_attn(with_pos, with_pos, queries, attn_mask)
        queries = self.self_attn_norm(queries + self.self_attn_dropout(attended))
        queries = self.cross_attn(
            query=queries,
            value=memory,
            reference_points=reference_boxes,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            query_pos=query_pos,
            key_padding_mask=memory_padding_mask,
        )
        queries = self.cross_attn_norm(queries)
        return self.ffn_norm(self.ffn(queries))


class DINODecoder(nn.Module):
    """A stack of :class:`DINODecoderLayer` whose query positions come from the current reference boxes.

    Args:
        num_layers: decoder depth.
        embed_dim, num_heads, feedforward_dim, num_levels, num_points, attn_dropout, ffn_dropout: layer settings.
        look_forward_twice: return each layer's refined boxes with their gradient (the next layer still gets them
            detached), so a layer's box loss also trains the previous layer.
    """

    def __init__(
        self,
        num_layers: int = 6,
        embed_dim: int = 256,
        num_heads: int = 8,
        feedforward_dim: int = 2048,
        num_levels: int = 4,
        num_points: int = 4,
        attn_dropout: float = 0.0,
        ffn_dropout: float = 0.0,
        look_forward_twice: bool = True,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DINODecoder: num_layers must be >= 1, got {num_layers}")
        if embed_dim % 2:
            raise ValueError(f"DINODecoder: embed_dim must be even, got {embed_dim}")
        self.num_layers = num_layers
        self.embed_dim = embed_dim
        self.look_forward_twice = look_forward_twice
        try:
            layers = [
                DINODecoderLayer(
                    embed_dim, num_heads, feedforward_dim, num_levels, num_points, attn_dropout, ffn_dropout
                )
                for _ in range(num_layers)
            ]
        except ValueError as error:  # a layer's part names itself ("MultiheadAttention: ..."), not the decoder
            raise ValueError(f"DINODecoder (model.transformer.decoder): {error}") from None
        self.layers = nn.ModuleList(layers)
        self.ref_point_head = MLP(2 * embed_dim, embed_dim, embed_dim, 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(
        self,
        queries: torch.Tensor,
        reference_boxes: torch.Tensor,
        memory: torch.Tensor,
        memory_padding_mask: Optional[torch.Tensor],
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor,
        box_heads: Sequence[nn.Module],
        attn_mask: Optional[torch.Tensor] = None,
        last_layer_only: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """queries ``(B, Q, C)``; reference_boxes ``(B, Q, 4)`` normalised cxcywh; memory ``(B, N, C)``,
        memory_padding_mask ``(B, N)`` True = padding, or None (nothing padded); valid_ratios ``(B, L, 2)``;
        box_heads: one box-delta head per layer but the last (refinement: the last layer's boxes are the
        prediction heads' to make, from its normalised state).

        Returns, per layer, the normalised hidden states ``(num_layers, B, Q, C)`` and the boxes the layer started
        from ``(num_layers, B, Q, 4)`` (sigmoid space; the first layer's are ``reference_boxes``, each later layer's
        the previous layer's refinement, which with ``look_forward_twice`` keeps its gradient). With
        ``last_layer_only`` (what inference reads), the last layer's alone: ``(1, B, Q, C)`` and ``(1, B, Q, 4)``.
        """
        if len(box_heads) < self.num_layers - 1:
            raise ValueError(f"DINODecoder: {len(box_heads)} box heads for {self.num_layers} layers")
        hidden_states, layer_boxes = [], []
        # Each level sees the boxes scaled by its valid ratios (w, h, w, h): as rows for the sampling (one per query,
        # see SamplingReference), and for the first level, whose boxes give the query positions.
        first_level_scale = valid_ratios[:, None, 0].repeat(1, 1, 2)
        scale_rows = box_scale_rows(valid_ratios, self.layers[0].cross_attn.num_points)
        input_boxes = reference_boxes
        for i, layer in enumerate(self.layers):
            last = i == self.num_layers - 1
            query_pos = self.ref_point_head(
                box_sine_embedding(reference_boxes * first_level_scale, self.embed_dim // 2)
            )
            queries = layer(
                queries,
                query_pos,
                memory,
                memory_padding_mask,
                box_reference(reference_boxes, scale_rows),
                spatial_shapes,
                level_start_index,
                attn_mask,
            )
            if last or not last_layer_only:
                hidden_states.append(self.norm(queries))
                layer_boxes.append(input_boxes)
            if not last:
                new_boxes = (box_heads[i](queries) + inverse_sigmoid(reference_boxes)).sigmoid()
                input_boxes = new_boxes if self.look_forward_twice else new_boxes.detach()
                # without autograd there is nothing to detach (one operator less per layer)
                reference_boxes = new_boxes.detach() if torch.is_grad_enabled() else new_boxes
        return torch.stack(hidden_states), torch.stack(layer_boxes)
