"""The cascade dual-attention encoder: each layer refines only the foreground tokens the selector kept for it."""
import dataclasses
import numbers
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import nn

from ..layers.attention import MultiheadAttention
from ..layers.mlp import FFN
from ..layers.ms_deform_attn import MultiScaleDeformableAttention, SamplingReference, point_reference
from ..layers.token_rows import gather_tokens, scatter_tokens, token_rows
from ..layers.traced_shapes import capped_count
from .foreground_selector import ForegroundSelection


def _leading_columns(inds_0: torch.Tensor, layer_inds: List[torch.Tensor]) -> bool:
    """Whether every layer's ``(B, k_j)`` indices are the first ``k_j`` columns of ``inds_0`` itself (views of the
    same memory, as the selector returns them): then each layer's tokens are a prefix of the first layer's, known
    without reading any index."""
    return all(
        inds.data_ptr() == inds_0.data_ptr() and inds.stride() == inds_0.stride() and inds.shape[0] == inds_0.shape[0]
        and inds.shape[1] <= inds_0.shape[1]
        for inds in layer_inds
    )


def _take(tokens: torch.Tensor, where) -> torch.Tensor:
    """A layer's tokens among ``tokens`` ``(B, n, ...)``: the first ``where`` (an int) or those at the rows
    ``where`` ``(B * k,)`` (:func:`~focus_detr.layers.token_rows.token_rows`)."""
    if not isinstance(where, int):
        return gather_tokens(tokens, where)
    return tokens if where == tokens.shape[1] else tokens.narrow(1, 0, where)  # one view operator at most


def _put(tokens: torch.Tensor, where, values: torch.Tensor, in_place: bool) -> torch.Tensor:
    """Writes a layer's updated tokens ``values`` back at ``where`` (see :func:`_take`), into a copy unless
    ``in_place``."""
    if not isinstance(where, int):
        return scatter_tokens(tokens, where, values, in_place)
    if where == tokens.shape[1]:
        return tokens.copy_(values) if in_place else values
    if in_place:
        tokens[:, :where] = values
        return tokens
    return torch.cat([values, tokens[:, where:]], 1)


def _positions_within(inds_0: torch.Tensor, layer_inds: List[torch.Tensor], num_tokens: int):
    """Where each layer's token indices ``(B, k_j)`` sit in ``inds_0`` ``(B, k_0)`` (indices into ``N`` tokens):
    per layer the rows ``(B * k_j,)`` of its tokens among the ``(B, k_0)`` ones (see
    :func:`~focus_detr.layers.token_rows.token_rows`), or None if some index is not in ``inds_0``."""
    if torch.jit.is_tracing():
        return None  # no data-dependent branch in an exported graph: it keeps the full-sequence form
    rank = inds_0.new_full((inds_0.shape[0], num_tokens), -1)
    rank.scatter_(1, inds_0, torch.arange(inds_0.shape[1], device=inds_0.device).expand_as(inds_0))
    positions = [rank.gather(1, inds) for inds in layer_inds]
    if any(bool((where < 0).any()) for where in positions):
        return None
    return [token_rows(where, inds_0.shape[1]) for where in positions]


FINE_GRAINED_SCORINGS = ("multi_category", "foreground")


def _checked_fine_grained_count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(
            f"num_fine_grained_tokens must be an integer >= 0 (0: no fine-grained attention), got {value!r}"
        )
    return int(value)


class DualAttentionEncoderLayer(nn.Module):
    """One encoder layer over a set of foreground tokens (post-norm):

    1. multi-category scores (max class logit x foreground logit) pick the fine-grained tokens;
    2. self-attention among the fine-grained tokens (+ LayerNorm), written back into the foreground set (skipped, and
       its weights not built, with ``num_fine_grained_tokens=0``: the ablation without dual attention);
    3. multi-scale deformable attention from the foreground tokens over all (un-updated) value tokens, + LayerNorm;
    4. FFN + LayerNorm.

    Args:
        embed_dim, num_heads, feedforward_dim: transformer widths.
        num_levels, num_points: deformable-attention sampling layout.
        attn_dropout: dropout of the attention blocks (detrex's ``attn_dropout``: the fine-grained self-attention's
            weights and output, the deformable attention's output).
        ffn_dropout: dropout of the feed-forward block (detrex's ``ffn_dropout``).
        num_fine_grained_tokens: tokens that get self-attention (the paper's 300); fewer when the layer keeps fewer;
            0 skips the self-attention.
        fine_grained_scoring: what ranks the fine-grained tokens: ``"multi_category"`` (the paper) or
            ``"foreground"`` (the foreground logit alone, an ablation).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        feedforward_dim: int = 2048,
        num_levels: int = 4,
        num_points: int = 4,
        attn_dropout: float = 0.0,
        ffn_dropout: float = 0.0,
        num_fine_grained_tokens: int = 300,
        fine_grained_scoring: str = "multi_category",
    ):
        super().__init__()
        if fine_grained_scoring not in FINE_GRAINED_SCORINGS:
            raise ValueError(
                f"fine_grained_scoring must be one of {', '.join(FINE_GRAINED_SCORINGS)}, got {fine_grained_scoring!r}"
            )
        self._num_fine_grained_tokens = _checked_fine_grained_count(num_fine_grained_tokens)
        self.fine_grained_scoring = fine_grained_scoring
        if num_fine_grained_tokens:
            # Not built when unused: parameters without gradients would stall DDP and load as unexpected keys.
            self.fine_grained_attn = MultiheadAttention(embed_dim, num_heads, attn_dropout)
            self.fine_grained_dropout = nn.Dropout(attn_dropout)
            self.fine_grained_norm = nn.LayerNorm(embed_dim)
        self.cross_attn = MultiScaleDeformableAttention(embed_dim, num_heads, num_levels, num_points, attn_dropout)
        self.cross_attn_norm = nn.LayerNorm(embed_dim)
        self.ffn = FFN(embed_dim, feedforward_dim, ffn_dropout)
        self.ffn_norm = nn.LayerNorm(embed_dim)

    # A property, so that an assignment to a built model is checked as the constructor checks it: -5 failed deep in
    # the forward ("selected index k out of range"), a count on a layer built without the attention at its first use.
    @property
    def num_fine_grained_tokens(self) -> int:
        """Tokens that get self-attention (0: none)."""
        return self._num_fine_grained_tokens

    @num_fine_grained_tokens.setter
    def num_fine_grained_tokens(self, value: int) -> None:
        value = _checked_fine_grained_count(value)
        if value and not hasattr(self, "fine_grained_attn"):  # not the count: one set to 0 can be set back
            raise ValueError(f"num_fine_grained_tokens cannot become {value}: the layer was built without fine-grained "
                             "attention (num_fine_grained_tokens=0); build the model with the count in its config")
        self._num_fine_grained_tokens = value

    def __setstate__(self, state):
        if "num_fine_grained_tokens" in state:  # a model pickled whole before it was a property
            state["_num_fine_grained_tokens"] = state.pop("num_fine_grained_tokens")
        super().__setstate__(state)

    def multi_category_scores(
        self, queries: torch.Tensor, foreground_scores: torch.Tensor, category_head: Callable
    ) -> torch.Tensor:
        """queries ``(B, k, C)``, foreground_scores ``(B, k)`` -> ranking scores ``(B, k)``: max class logit x
        foreground logit.

        Two raw logits, not probabilities, as the released weights were trained with; only the ranking is used, so
        no gradient flows through it.
        """
        with torch.no_grad():
            return category_head(queries).max(-1)[0] * foreground_scores

    def select_fine_grained(self, category_scores: torch.Tensor) -> torch.Tensor:
        """category_scores ``(B, k)`` -> indices of the fine-grained tokens among the k queries ``(B, m)``,
        best first."""
        num_fine = capped_count(self.num_fine_grained_tokens, category_scores.shape[1])
        return category_scores.topk(num_fine, dim=1)[1]

    def fine_grained_ranking(
        self, queries: torch.Tensor, foreground_scores: torch.Tensor, category_head: Callable
    ) -> torch.Tensor:
        """queries ``(B, k, C)``, foreground_scores ``(B, k)`` -> the scores ``(B, k)`` that rank the fine-grained
        tokens, as ``fine_grained_scoring`` says."""
        if self.fine_grained_scoring == "foreground":
            return foreground_scores
        return self.multi_category_scores(queries, foreground_scores, category_head)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        foreground_scores: torch.Tensor,
        value: torch.Tensor,
        value_padding_mask: Optional[torch.Tensor],
        reference_points: Union[torch.Tensor, SamplingReference],
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        category_head: Callable,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """queries, query_pos ``(B, k, C)``: the layer's foreground tokens; foreground_scores ``(B, k)``;
        value ``(B, N, C)``, value_padding_mask ``(B, N)`` or None (nothing padded); reference_points ``(B, k, L, 2)``
        or their :class:`~focus_detr.layers.ms_deform_attn.SamplingReference`.
        Returns the updated queries ``(B, k, C)`` and the fine-grained indices into them ``(B, m)`` (m = 0 without
        fine-grained attention)."""
        if self.num_fine_grained_tokens:
            fine_inds = self.select_fine_grained(self.fine_grained_ranking(queries, foreground_scores, category_head))
            rows = token_rows(fine_inds, queries.shape[1])  # queries and query_pos alike
            fine = gather_tokens(queries, rows)
            fine_with_pos = fine + gather_tokens(query_pos, rows)
            attended = self.fine_grained_attn(fine_with_pos, fine_with_pos, fine)
            fine = self.fine_grained_norm(fine + self.fine_grained_dropout(attended))
            queries = scatter_tokens(queries, rows, fine)
        else:
            fine_inds = queries.new_empty((queries.shape[0], 0), dtype=torch.long)

        queries = self.cross_attn(
            query=queries,
            value=value,
            reference_points=reference_points,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            query_pos=query_pos,
            key_padding_mask=value_padding_mask,
        )
        queries = self.cross_attn_norm(queries)
        queries = self.ffn_norm(self.ffn(queries))
        return queries, fine_inds


class CascadeDualAttentionEncoder(nn.Module):
    """A stack of :class:`DualAttentionEncoderLayer`; layer j updates the first ``k_j`` foreground tokens.

    Args:
        num_layers: encoder depth; must equal the selector's number of cascade keep ratios.
        the rest: passed to every layer.
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
        num_fine_grained_tokens: int = 300,
        fine_grained_scoring: str = "multi_category",
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"CascadeDualAttentionEncoder: num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        try:
            layers = [
                DualAttentionEncoderLayer(
                    embed_dim, num_heads, feedforward_dim, num_levels, num_points, attn_dropout, ffn_dropout,
                    num_fine_grained_tokens, fine_grained_scoring,
                )
                for _ in range(num_layers)
            ]
        except ValueError as error:  # a layer's part names itself ("MultiheadAttention: ..."), not the encoder
            raise ValueError(f"CascadeDualAttentionEncoder (model.transformer.encoder): {error}") from None
        self.layers = nn.ModuleList(layers)

    # A property setting every layer's: the layers hold the count, so an attribute of the encoder alone changed nothing.
    @property
    def num_fine_grained_tokens(self) -> int:
        """Tokens per layer that get self-attention (the first layer's, where a layer was given its own count)."""
        return self.layers[0].num_fine_grained_tokens

    @num_fine_grained_tokens.setter
    def num_fine_grained_tokens(self, value: int) -> None:
        try:
            for layer in self.layers:  # built alike: a refused value is refused by the first, before any change
                layer.num_fine_grained_tokens = value
        except ValueError as error:
            raise ValueError(f"CascadeDualAttentionEncoder (model.transformer.encoder): {error}") from None

    def forward(
        self,
        tokens: torch.Tensor,
        pos: torch.Tensor,
        padding_mask: Optional[torch.Tensor],
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        selection: ForegroundSelection,
        category_head: Callable,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """tokens, pos ``(B, N, C)``: flattened neck features and their position + level embeddings;
        padding_mask ``(B, N)`` True = padding (None: nothing padded); reference_points ``(B, N, L, 2)``.

        Returns the memory ``(B, N, C)`` (tokens no layer kept stay the raw neck features) and, per layer, the
        fine-grained token indices into the full sequence ``(B, m_j)``.
        """
        if len(selection.foreground_inds) != self.num_layers:
            raise ValueError(
                f"CascadeDualAttentionEncoder: {len(selection.foreground_inds)} cascade keep ratios for "
                f"{self.num_layers} encoder layers"
            )
        # Every layer samples the original neck tokens; only the query side evolves (as the released weights expect).
        value = tokens
        # The layers work on the first layer's foreground tokens only (every later layer's tokens are among them:
        # each layer keeps a prefix of one score ranking), gathered once and written back once, so the per-layer
        # gathers and scatters, and in training their backward, move (B, k_0, C) instead of (B, N, C) buffers.
        inds_0 = selection.foreground_inds[0]
        if _leading_columns(inds_0, selection.foreground_inds):
            positions = [inds.shape[1] for inds in selection.foreground_inds]
        else:
            positions = _positions_within(inds_0, selection.foreground_inds, tokens.shape[1])
        if positions is None:
            # A later layer picked a token the first did not (possible only through score ties): full sequences.
            inds_0 = None
            positions = [token_rows(inds, tokens.shape[1]) for inds in selection.foreground_inds]
        if inds_0 is None:
            foreground, foreground_pos, foreground_refs = tokens, pos, reference_points
            foreground_scores = selection.selection_scores
        else:
            rows_0 = token_rows(inds_0, tokens.shape[1])
            foreground, foreground_pos = gather_tokens(tokens, rows_0), gather_tokens(pos, rows_0)
            foreground_refs = gather_tokens(reference_points, rows_0)
            foreground_scores = gather_tokens(selection.selection_scores, rows_0)
        # Without autograd, the foreground copy is updated in place by every layer instead of a copy per layer
        # (the gathers from it save it for backward, so training scatters out of place). Not when traced: the ONNX
        # exporter drops writes made through a view, as the scatter of a batch of several images is.
        in_place = not torch.is_grad_enabled() and not torch.jit.is_tracing()
        if in_place and inds_0 is None:
            foreground = foreground.clone()
        # The tokens' sampling rows, built once: each layer takes its tokens' rows, as it takes their features.
        sampling = point_reference(foreground_refs, spatial_shapes, self.layers[0].cross_attn.num_points)
        fine_grained_inds = []
        budgets = selection.focus_token_counts
        for layer, inds, where in zip(self.layers, selection.foreground_inds, positions):
            queries = _take(foreground, where)
            updated, fine_inds = layer(
                queries,
                _take(foreground_pos, where),
                _take(foreground_scores, where),
                value,
                padding_mask,
                dataclasses.replace(sampling, origin=_take(sampling.origin, where)),
                spatial_shapes,
                level_start_index,
                category_head,
            )
            # Each image writes back only its own foreground budget; beyond it, the batch-wide k_j holds tokens
            # ranked for another image's larger budget (nothing to mask where every budget covers the k_j tokens).
            if budgets is None or min(budgets) < inds.shape[1]:
                within_budget = (
                    torch.arange(inds.shape[1], device=inds.device)[None] < selection.focus_token_nums[:, None]
                )
                updated = torch.where(within_budget[..., None], updated, queries)
            foreground = _put(foreground, where, updated, in_place)
            fine_grained_inds.append(inds.gather(1, fine_inds))
        memory = foreground if inds_0 is None else scatter_tokens(tokens, rows_0, foreground)
        return memory, fine_grained_inds
