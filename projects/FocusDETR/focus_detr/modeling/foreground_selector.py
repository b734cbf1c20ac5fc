"""The Foreground Token Selector (FTS): scores every token as foreground, modulating fine levels with the scores of
coarser ones (top-down), and picks how many and which tokens each encoder layer updates."""
import collections.abc
import functools
import numbers
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
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
        batch, num_tokens, channels = tokens.shape
        # the Linear layers on 2-D (B * n, C) rows: each is then one matrix product, without reshapes around it
        projected = self.projection(tokens.reshape(batch * num_tokens, channels))
        local_feats, global_feats = projected.view(batch, num_tokens, channels).chunk(2, dim=-1)
        # The mean runs over every token of the level, padding included, as the released weights expect.
        global_feats = global_feats.mean(dim=1, keepdim=True).expand(-1, num_tokens, -1)
        features = torch.cat([local_feats, global_feats], dim=-1).view(batch * num_tokens, channels)
        return self.score_mlp(features).view(batch, num_tokens, 1)


@dataclass
class ForegroundSelection:
    """What the selector decided for one batch.

    Attributes:
        foreground_logits: ``(B, N, 1)`` raw foreground logits, unmasked (the foreground loss reads these).
        selection_scores: ``(B, N)`` the logits with padding set to the batch minimum, used for ranking.
        focus_token_nums: ``(B,)`` int, foreground tokens kept per image (the encoder writes back only that many of
            each image's tokens; read-only: the tensor may be shared through a cache).
        foreground_inds: per encoder layer, ``(B, k_j)`` int64 token indices sorted by descending score.
        focus_token_counts: ``focus_token_nums`` as Python ints, where known without a device read (else None).
    """

    foreground_logits: torch.Tensor
    selection_scores: torch.Tensor
    focus_token_nums: torch.Tensor
    foreground_inds: List[torch.Tensor]
    focus_token_counts: Optional[List[int]] = None

    @property
    def num_selected_tokens_per_layer(self) -> List[int]:
        return [inds.shape[1] for inds in self.foreground_inds]


def _validated_keep_ratios(keep_ratio: float, cascade_keep_ratios: Sequence[float]) -> Tuple[float, List[float]]:
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, numbers.Real) or not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"ForegroundTokenSelector: keep_ratio must be a number in (0, 1], got {keep_ratio!r}")
    is_list = isinstance(cascade_keep_ratios, collections.abc.Sequence) and not isinstance(cascade_keep_ratios, str)
    if not is_list or not cascade_keep_ratios or any(not isinstance(r, numbers.Real) or not 0.0 < r <= 1.0
                                                     for r in cascade_keep_ratios):
        raise ValueError(
            f"ForegroundTokenSelector: cascade_keep_ratios must be a non-empty list of values in (0, 1], "
            f"got {list(cascade_keep_ratios) if is_list else repr(cascade_keep_ratios)}"
        )
    ratios = [float(r) for r in cascade_keep_ratios]
    if any(later > earlier for earlier, later in zip(ratios, ratios[1:])):
        # each layer updates a subset of the tokens of the layer before (the paper's cascade): with a growing ratio
        # a layer would need tokens its predecessor dropped
        raise ValueError(f"ForegroundTokenSelector: cascade_keep_ratios must not grow from one encoder layer to the "
                         f"next (e.g. [1.0, 0.8, 0.6]), got {ratios}")
    return float(keep_ratio), ratios


def _assigned(value, name):
    """``value`` assigned to ``name``, which None does not leave as it was (``set_keep_ratios``' None does)."""
    if value is None:
        raise ValueError(f"ForegroundTokenSelector: {name} cannot be None")
    return value


TOKEN_RANKINGS = ("foreground", "random")


class ForegroundTokenSelector(nn.Module):
    """Foreground scoring with top-down modulation, and the cascade of per-layer token counts.

    Args:
        embed_dim: token width.
        num_levels: feature levels (finest first in the token sequence).
        keep_ratio: fraction of each image's valid tokens kept as foreground, in (0, 1] (paper: rho = 0.5).
        cascade_keep_ratios: per encoder layer, the fraction of the foreground budget that layer updates, each in
            (0, 1] and none larger than the one before (paper: [1.0, 0.8, 0.6, 0.6, 0.4, 0.2]).
        top_down_modulation: modulate each level's tokens with the upsampled logits of the next coarser level.
        modulation_init_range: the learnable per-level modulation weights start in U(-r, r).
        token_ranking: what picks the kept tokens: ``"foreground"`` (the foreground scores, the paper) or
            ``"random"`` (uniformly at random among each image's valid tokens, at the same counts: the floor any
            scoring must beat, an ablation; drawn from torch's global generator, so evaluation is seed-dependent).
            The encoder's fine-grained scoring reads the foreground logits either way.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_levels: int = 4,
        keep_ratio: float = 0.5,
        cascade_keep_ratios: Sequence[float] = (1.0, 0.8, 0.6, 0.6, 0.4, 0.2),
        top_down_modulation: bool = True,
        modulation_init_range: float = 0.3,
        token_ranking: str = "foreground",
    ):
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"ForegroundTokenSelector: num_levels must be >= 1, got {num_levels}")
        if not modulation_init_range >= 0:  # the bounds of a uniform draw, U(-r, r)
            raise ValueError(
                f"ForegroundTokenSelector: modulation_init_range must be >= 0, got {modulation_init_range}")
        if token_ranking not in TOKEN_RANKINGS:
            raise ValueError(
                f"ForegroundTokenSelector: token_ranking must be one of {', '.join(TOKEN_RANKINGS)}, "
                f"got {token_ranking!r}"
            )
        self.token_ranking = token_ranking
        self.num_levels = num_levels
        self._keep_ratio, self._cascade_keep_ratios = _validated_keep_ratios(keep_ratio, cascade_keep_ratios)
        self.top_down_modulation = top_down_modulation
        self.predictor = ForegroundPredictor(embed_dim)
        self.modulation_weights = nn.Parameter(torch.empty(num_levels - 1))
        # built without modulation too: every other weight draws the same initial values
        nn.init.uniform_(self.modulation_weights, -modulation_init_range, modulation_init_range)

    def set_keep_ratios(self, keep_ratio: float = None, cascade_keep_ratios: Sequence[float] = None) -> None:
        """Changes the token budget of a built model (e.g. to trade accuracy for speed at evaluation time); None
        keeps the current value. The number of cascade ratios stays the number of encoder layers."""
        keep_ratio = self._keep_ratio if keep_ratio is None else keep_ratio
        cascade_keep_ratios = self._cascade_keep_ratios if cascade_keep_ratios is None else cascade_keep_ratios
        keep_ratio, cascade_keep_ratios = _validated_keep_ratios(keep_ratio, cascade_keep_ratios)
        if len(cascade_keep_ratios) != len(self._cascade_keep_ratios):
            raise ValueError(
                f"ForegroundTokenSelector: cascade_keep_ratios needs one entry per encoder layer "
                f"({len(self._cascade_keep_ratios)}), got {cascade_keep_ratios}"
            )
        self._keep_ratio, self._cascade_keep_ratios = keep_ratio, cascade_keep_ratios

    # Properties, so that an assignment (``selector.keep_ratio = 0.3``, the Python form of the config override) is
    # checked as the constructor checks it: a negative ratio kept no token without a word.
    @property
    def keep_ratio(self) -> float:
        """The fraction of each image's tokens the first encoder layer updates."""
        return self._keep_ratio

    @keep_ratio.setter
    def keep_ratio(self, value: float) -> None:
        self.set_keep_ratios(keep_ratio=_assigned(value, "keep_ratio"))

    @property
    def cascade_keep_ratios(self) -> List[float]:
        """Per encoder layer, the fraction of the foreground budget it updates (a copy: assign a new list to change
        them)."""
        return list(self._cascade_keep_ratios)

    @cascade_keep_ratios.setter
    def cascade_keep_ratios(self, value: Sequence[float]) -> None:
        self.set_keep_ratios(cascade_keep_ratios=_assigned(value, "cascade_keep_ratios"))

    def __setstate__(self, state):
        for name in ("keep_ratio", "cascade_keep_ratios"):  # a model pickled whole before they were properties
            if name in state:
                state["_" + name] = state.pop(name)
        super().__setstate__(state)

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

    def layer_token_counts(self, focus_token_nums, num_tokens: int) -> List[int]:
        """Tokens updated by each encoder layer (:func:`layer_token_counts`) for foreground budgets
        ``focus_token_nums`` (a ``(B,)`` tensor or Python ints)."""
        return layer_token_counts(focus_token_nums, self._cascade_keep_ratios, num_tokens)

    def forward(
        self,
        memory: torch.Tensor,
        padding_mask: Optional[torch.Tensor],
        spatial_shapes: Sequence[Tuple[int, int]],
        valid_token_nums: Optional[Sequence[int]] = None,
    ) -> ForegroundSelection:
        """memory ``(B, N, C)`` projected tokens; padding_mask ``(B, N)`` True = padding, or None (nothing padded);
        spatial_shapes per level ``(h, w)``; valid_token_nums: unpadded tokens per image as Python ints, if known (the
        budgets are then computed on the host, without reading the mask back from the device). Returns the
        :class:`ForegroundSelection`."""
        if len(spatial_shapes) != self.num_levels:
            raise ValueError(f"ForegroundTokenSelector: expected {self.num_levels} levels, got {len(spatial_shapes)}")
        batch_size, num_tokens = memory.shape[:2]
        foreground_logits = self.score_tokens(memory, spatial_shapes)
        if self.training and not self.top_down_modulation:
            # a (zero) gradient for the unused modulation weights: DDP stopped every multi-process run at its second
            # step without one; frozen instead, they would leave earlier runs' optimizer states unloadable
            foreground_logits = foreground_logits + 0.0 * self.modulation_weights.sum()
        scores = foreground_logits.squeeze(-1)
        selection_scores = scores if padding_mask is None else scores.masked_fill(padding_mask, scores.min())
        ranking = selection_scores if self.token_ranking == "foreground" else _random_ranking(scores, padding_mask)

        if valid_token_nums is None and not torch.jit.is_tracing():
            valid_token_nums = [num_tokens] * batch_size if padding_mask is None else (~padding_mask).sum(-1).tolist()
        if valid_token_nums is None:
            # Under tracing the counts are graph values (exported graphs follow the input size), which a slice would
            # freeze: one top-k per layer.
            focus_token_nums = focus_token_nums_of((~padding_mask).sum(-1), self._keep_ratio, num_tokens)
            foreground_inds = [
                ranking.topk(k, dim=1)[1] for k in self.layer_token_counts(focus_token_nums, num_tokens)
            ]
            focus_token_counts = None
        else:
            # Counted on the host from the image sizes: no value is read back from the device.
            focus_token_counts = focus_token_nums_of(valid_token_nums, self._keep_ratio, num_tokens)
            counts = self.layer_token_counts(focus_token_counts, num_tokens)
            focus_token_nums = _int_tensor(tuple(focus_token_counts), memory.device)
            # Each layer keeps a prefix of one ranking: views of the first layer's indices (the encoder relies on it).
            first = ranking.topk(counts[0], dim=1)[1]
            foreground_inds = [first[:, :k] for k in counts]
        return ForegroundSelection(
            foreground_logits, selection_scores, focus_token_nums, foreground_inds, focus_token_counts
        )


def _random_ranking(scores: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Uniform random ranking scores ``(B, N)`` in [0, 1), padding at -1 (ranked after every valid token)."""
    ranking = torch.rand(scores.shape, device=scores.device)
    return ranking if padding_mask is None else ranking.masked_fill(padding_mask, -1.0)


def focus_token_nums_of(valid_token_nums, keep_ratio: float, num_tokens):
    """Foreground tokens kept per image: ``keep_ratio`` of its valid tokens, plus one, at most all.
    valid_token_nums: ``(B,)`` int tensor -> ``(B,)`` int32 tensor, or Python ints -> Python ints (the same float32
    arithmetic on the host)."""
    if isinstance(valid_token_nums, torch.Tensor):
        return ((valid_token_nums * keep_ratio).int() + 1).clamp(max=num_tokens)
    return [min(int(np.float32(v) * np.float32(keep_ratio)) + 1, num_tokens) for v in valid_token_nums]


def layer_token_counts(focus_token_nums, cascade_keep_ratios: Sequence[float], num_tokens) -> List:
    """Tokens updated by each encoder layer: the cascade ratios times the batch's largest foreground budget.

    float32 product then truncation, as the released models computed it (0.8 and 0.6 are inexact in float32):
    on a ``(B,)`` tensor of budgets, or on the host for Python ints. Under ``torch.jit.trace`` (``num_tokens`` is
    then a traced size) the counts are 0-dim tensors computed in the graph, so an exported model recomputes them
    for every input size.
    """
    if not isinstance(focus_token_nums, torch.Tensor):
        largest = np.float32(max(focus_token_nums))
        return [min(max(int(np.float32(r) * largest), 1), num_tokens) for r in cascade_keep_ratios]
    ratios = torch.tensor(cascade_keep_ratios, dtype=torch.float32, device=focus_token_nums.device)
    counts = (ratios * focus_token_nums.max()).int().clamp(min=1)
    if isinstance(num_tokens, torch.Tensor):
        return list(counts.clamp(max=num_tokens).unbind(0))
    return [min(k, num_tokens) for k in counts.tolist()]


@functools.lru_cache(maxsize=64)
def _int_tensor(values: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``values`` as an int32 tensor on ``device``, uploaded once per distinct value (shared: never modify it). A
    plain tensor even when first made under torch.inference_mode (a training step may read it later)."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=torch.int32, device=device)
