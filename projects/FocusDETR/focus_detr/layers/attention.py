"""Multi-head attention computed directly: a drop-in for ``nn.MultiheadAttention(batch_first=True)`` as the model
uses it, with the same parameters (names, shapes, initialisation), so every checkpoint loads unchanged.

``nn.MultiheadAttention`` dispatches ~33 operators per call as the model calls it (separate query/key/value
projections on 3-D inputs, layout shuffles); this module dispatches 19 (queries and keys projected together, 2-D
products, views into the heads), which matters on a GPU, where each operator costs host time.
"""
import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadAttention(nn.Module):
    """Scaled dot-product attention over ``num_heads`` heads, batch first.

    Parameters as in ``nn.MultiheadAttention(embed_dim, num_heads, dropout, batch_first=True)``: ``in_proj_weight``
    ``(3C, C)`` and ``in_proj_bias`` ``(3C,)`` (query, key, value rows in that order), ``out_proj`` a ``Linear(C, C)``.

    Args:
        embed_dim: channels C; must be divisible by num_heads.
        num_heads: attention heads.
        dropout: dropout on the attention weights, in training only.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim < 1 or num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be a positive multiple of num_heads "
                             f"({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MultiheadAttention: dropout must be in [0, 1), got {dropout}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        # nn.MultiheadAttention's initialisation, in its order of random draws (out_proj's default init above
        # first), so that a seeded model starts from the same weights as with nn.MultiheadAttention
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, projected: torch.Tensor, batch: int) -> torch.Tensor:
        """``(B * L, C)`` -> ``(B, heads, L, C / heads)``, a view."""
        return projected.view(batch, -1, self.num_heads, self.embed_dim // self.num_heads).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """query ``(B, L, C)``; key, value ``(B, S, C)``; attn_mask ``(L, S)`` bool, True = blocked (as for
        ``nn.MultiheadAttention``), or None. Returns the attended values ``(B, L, C)`` (no attention weights).

        A query row whose keys are all blocked gets zeros, as with ``nn.MultiheadAttention``.
        """
        batch, embed_dim = query.shape[0], self.embed_dim
        # projections on (B * L, C) rows: F.linear on a 2-D input is one matrix product, without reshapes around it
        if query is key:  # self-attention keys: one projection for queries and keys
            qk_weight, v_weight = self.in_proj_weight.split([2 * embed_dim, embed_dim])
            qk_bias, v_bias = self.in_proj_bias.split([2 * embed_dim, embed_dim])
            qk = F.linear(query.reshape(-1, embed_dim), qk_weight, qk_bias)
            # (B * L, 2C) -> (2, B, heads, L, C / heads): views
            q, k = qk.view(batch, -1, 2, self.num_heads, embed_dim // self.num_heads).permute(2, 0, 3, 1, 4)
        else:
            q_weight, k_weight, v_weight = self.in_proj_weight.split(embed_dim)
            q_bias, k_bias, v_bias = self.in_proj_bias.split(embed_dim)
            q = self._heads(F.linear(query.reshape(-1, embed_dim), q_weight, q_bias), batch)
            k = self._heads(F.linear(key.reshape(-1, embed_dim), k_weight, k_bias), batch)
        v = self._heads(F.linear(value.reshape(-1, embed_dim), v_weight, v_bias), batch)
        if _float32_attention_pays(q):
            q, k, v = q.float(), k.float(), v.float()
            autocast = torch.autocast("cpu", enabled=False)
        else:
            autocast = contextlib.nullcontext()
        if attn_mask is not None:  # nn.MultiheadAttention's conversion: an additive mask, -inf where blocked
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill_(attn_mask, float("-inf"))
        with autocast:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask, self.dropout if self.training else 0.0)
        rows = attended.transpose(1, 2).reshape(-1, embed_dim)
        return F.linear(rows, self.out_proj.weight, self.out_proj.bias).view(batch, -1, embed_dim)


def _float32_attention_pays(q: torch.Tensor) -> bool:
    """Whether to attend in float32 a bfloat16 ``q`` (autocast) that needs gradients on the CPU: there PyTorch's
    bfloat16 attention backward takes 3-4x the float32 one at 100-140 tokens (the tree model), and is level with
    it at R50's lengths."""
    return q.dtype == torch.bfloat16 and q.device.type == "cpu" and q.requires_grad
