"""The Foreground Token Selector (FTS): scores every token as foreground, modulating fine levels with the scores of
coarser ones (top-down), and picks how many and which tokens each encoder layer updates."""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F


class ForegroundPredictor(nn.Module):
    """Scores the tokens of one feature level from a local half and a level-global (mean) half of a projection.

    Args:
        embed_dim: token width; the projection is split into two halves of ``embed_dim // 2``.
    """

    def __init__(self, embed_dim: int = 256):
        super().__init__()
        if embed_dim % 4:
            raise ValueError(f"ForegroundPredictor: embed_dim must be divisible by 4, got {embed_dim}")
        self.projection = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU())
        self.score_mlp = nn.Sequential(
            nn.Linear(embed_dim, embed_dim // 2),
            nn.GELU(),
            nn.Linear(embed_dim // 2, embed_dim // 4),
            nn.GELU(),
            nn.Linear(embed_dim // 4, 1),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``(B, n, C)`` of one level -> raw foreground logits ``(B, n, 1)``."""
        local_feats, global_feats = self.projection(tokens).chunk(2, dim=-1)
        # The mean runs over every token of the level, padding included, as the released weights expect.
        global_feats = global_feats.mean(dim=1, keepdim=True).expand(-1, tokens.shape[1], -1)
        return self.score_mlp(torch.cat([local_feats, global_feats], dim=-1))


@dataclass
class ForegroundSelection:
    """What the selector decided for one batch.

    Attributes:
        foreground_logits: ``(B, N, 1)`` raw foreground logits, unmasked (the foreground loss reads these).
        selection_scores: ``(B, N)`` the logits with padding set to the batch minimum, used for ranking.
        focus_token_nums: ``(B,)`` int, foreground tokens kept per image (written back by the encoder).
        foreground_inds: per encoder layer, ``(B, k_j)`` int64 token indices sorted by descending score.
    """

    foreground_logits: torch.Tensor
    selection_scores: torch.Tensor
    focus_token_nums: torch.Tensor
    foreground_inds: List[torch.Tensor]

    @property
    def num_selected_tokens_per_layer(self) -> List[int]:
        return [inds.shape[1] for inds in self.foreground_inds]


def _validated_keep_ratios(keep_ratio: float, cascade_keep_ratios: Sequence[float]) -> Tuple[float, List[float]]:
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"ForegroundTokenSelector: keep_ratio must be in (0, 1], got {keep_ratio}")
    cascade_keep_ratios = [float(r) for r in cascade_keep_ratios]
    if not cascade_keep_ratios or any(not 0.0 < r <= 1.0 for r in cascade_keep_ratios):
        raise ValueError(
            f"ForegroundTokenSelector: cascade_keep_ratios must be a non-empty list of values in (0, 1], "
            f"got {cascade_keep_ratios}"
        )
    return float(keep_ratio), cascade_keep_ratios


class ForegroundTokenSelector(nn.Module):
    """Foreground scoring with top-down modulation, and the cascade of per-layer token counts.

    Args:
        embed_dim: token width.
        num_levels: feature levels (finest first in the token sequence).
        keep_ratio: fraction of each image's valid tokens kept as foreground, in (0, 1] (paper: rho = 0.5).
        cascade_keep_ratios: per encoder layer, the fraction of the foreground budget that layer updates, each in
            (0, 1] (paper: [1.0, 0.8, 0.6, 0.6, 0.4, 0.2]).
        top_down_modulation: modulate each level's tokens with the upsampled logits of the next coarser level.
        modulation_init_range: the learnable per-level modulation weights start in U(-r, r).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_levels: int = 4,
        keep_ratio: float = 0.5,
        cascade_keep_ratios: Sequence[float] = (1.0, 0.8, 0.6, 0.6, 0.4, 0.2),
        top_down_modulation: bool = True,
        modulation_init_range: float = 0.3,
    ):
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"ForegroundTokenSelector: num_levels must be >= 1, got {num_levels}")
        self.num_levels = num_levels
        self.keep_ratio, self.cascade_keep_ratios = _validated_keep_ratios(keep_ratio, cascade_keep_ratios)
        self.top_down_modulation = top_down_modulation
        self.predictor = ForegroundPredictor(embed_dim)
        self.modulation_weights = nn.Parameter(torch.empty(num_levels - 1))
        nn.init.uniform_(self.modulation_weights, -modulation_init_range, modulation_init_range)

    def set_keep_ratios(self, keep_ratio: float = None, cascade_keep_ratios: Sequence[float] = None) -> None:
        """Changes the token budget of a built model (e.g. to trade accuracy for speed at evaluation time); None
        keeps the current value. The number of cascade ratios stays the number of encoder layers."""
        keep_ratio = self.keep_ratio if keep_ratio is None else keep_ratio
        cascade_keep_ratios = self.cascade_keep_ratios if cascade_keep_ratios is None else cascade_keep_ratios
        if len(cascade_keep_ratios) != len(self.cascade_keep_ratios):
            raise ValueError(
                f"ForegroundTokenSelector: cascade_keep_ratios needs one entry per encoder layer "
                f"({len(self.cascade_keep_ratios)}), got {list(cascade_keep_ratios)}"
            )
        self.keep_ratio, self.cascade_keep_ratios = _validated_keep_ratios(keep_ratio, cascade_keep_ratios)

    def score_tokens(self, memory: torch.Tensor, spatial_shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """memory ``(B, N, C)`` -> raw foreground logits ``(B, N, 1)``, scored coarsest level first."""
        batch_size, _, channels = memory.shape
        level_sizes = [h * w for h, w in spatial_shapes]
        level_tokens = memory.split(level_sizes, dim=1)
        scores = [None] * len(spatial_shapes)
        coarser = None
        for step, level in enumerate(reversed(range(len(spatial_shapes)))):
            tokens = level_tokens[level]
            h, w = spatial_shapes[level]
            if self.top_down_modulation and coarser is not None:
                upsampled = F.interpolate(coarser, size=(h, w), mode="bilinear", align_corners=True)
                spatial = tokens.reshape(batch_size, h, w, channels).permute(0, 3, 1, 2)
                modulation = spatial * upsampled * self.modulation_weights[step - 1]
                tokens = tokens + modulation.permute(0, 2, 3, 1).reshape(batch_size, h * w, channels)
            level_scores = self.predictor(tokens)
            coarser = level_scores.reshape(batch_size, 1, h, w)
            scores[level] = level_scores
        return torch.cat(scores, dim=1)

    def layer_token_counts(self, focus_token_nums: torch.Tensor, num_tokens: int) -> List[int]:
        """Tokens updated by each encoder layer: the cascade ratios times the batch's largest foreground budget.

        Under ``torch.jit.trace`` (``num_tokens`` is then a traced size) the counts are 0-dim tensors computed in the
        graph, so an exported model recomputes them for every input size.
        """
        # float32 product then truncation, as the released models computed it (0.8 and 0.6 are inexact in float32).
        ratios = torch.tensor(self.cascade_keep_ratios, dtype=torch.float32, device=focus_token_nums.device)
        counts = (ratios * focus_token_nums.max()).int().clamp(min=1)
        if isinstance(num_tokens, torch.Tensor):
            return list(counts.clamp(max=num_tokens).unbind(0))
        return [min(k, num_tokens) for k in counts.tolist()]

    def forward(
        self, memory: torch.Tensor, padding_mask: torch.Tensor, spatial_shapes: Sequence[Tuple[int, int]]
    ) -> ForegroundSelection:
        """memory ``(B, N, C)`` projected tokens; padding_mask ``(B, N)`` True = padding; spatial_shapes per level
        ``(h, w)``. Returns the :class:`ForegroundSelection`."""
        if len(spatial_shapes) != self.num_levels:
            raise ValueError(f"ForegroundTokenSelector: expected {self.num_levels} levels, got {len(spatial_shapes)}")
        num_tokens = memory.shape[1]
        foreground_logits = self.score_tokens(memory, spatial_shapes)
        scores = foreground_logits.squeeze(-1)
        selection_scores = scores.masked_fill(padding_mask, scores.min())

        valid_token_nums = (~padding_mask).sum(-1)
        focus_token_nums = ((valid_token_nums * self.keep_ratio).int() + 1).clamp(max=num_tokens)
        foreground_inds = [
            selection_scores.topk(k, dim=1)[1] for k in self.layer_token_counts(focus_token_nums, num_tokens)
        ]
        return ForegroundSelection(foreground_logits, selection_scores, focus_token_nums, foreground_inds)
