"""How well Focus-DETR's token selection matches the ground truth: the paper's scoring checked against the boxes.

For every evaluated image, per encoder layer and per feature level:

* **object recall**: the share of ground-truth objects with at least one kept token whose centre lies inside their
  box (also by object size: COCO's small < 32², medium < 96², large);
* **foreground precision**: the share of kept tokens whose centre lies inside some ground-truth box;
* **fine-grained hit rate**: the share of fine-grained tokens whose centre lies inside some ground-truth box;
* for reference, the **foreground share** (all valid tokens inside a box: a random selection's precision), the
  **kept share** (the share of a level's tokens a layer keeps) and the **recall ceiling** (the share of objects with
  any valid token centre inside, at any level: an object smaller than a token cell at every level can never be
  recalled, whatever is kept, so on data with tiny objects recall stays below 100% even for a dense encoder).

Token (i, j) of level l with spatial shape ``(h_l, w_l)`` covers a ``H / h_l`` x ``W / w_l`` cell of the padded
network input ``(H, W)``; its centre, in network-input pixels, is scaled to the original image by
``original size / network input size``, where the ground-truth boxes are (XYXY). A centre on a box edge is inside.

Conventions (as COCO's evaluation treats its ground truth):

* padded tokens (outside the image in a padded batch, by the model's own padding mask) are never counted;
* crowd annotations (``iscrowd=1``) are not objects to recall, and a token whose centre lies in a crowd box but in
  no other box is ignored (neither a hit nor a miss), as COCO ignores detections matched to crowd regions; the
  kept share counts it (it is budget spent);
* object size is the box area ``w * h`` in original-image pixels. detectron2's COCO loader drops the json's
  ``area`` field, so it is not available here; on COCO itself ``area`` is the mask area, which can move an object
  near a bucket edge into another bucket than APs/APm/APl's. On the tree data ``area`` is the box area.
  The buckets are half-open (COCOeval counts an area of exactly 32² or 96² in both neighbouring buckets).

The dataset figures are totals: the sum of hits over all images divided by the sum of counts (object recall:
recalled objects / objects; precision: kept tokens in boxes / kept tokens), not means of per-image ratios, so an
image with many objects or tokens weighs more. Reported in percent, like COCO AP; NaN where the count is zero.

:mod:`focus_detr.analysis.selection_quality_evaluator` runs this in an evaluation (``train.selection_quality``).
"""
import dataclasses
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import BoxMode
from torch.nn import functional as F

__all__ = [
    "COCO_SIZE_NAMES",
    "COCO_SIZE_THRESHOLDS",
    "GroundTruth",
    "SelectionCounts",
    "TokenGrid",
    "format_selection_quality",
    "ground_truth_of",
    "image_selection_counts",
    "selection_quality_metrics",
    "token_centres",
    "token_grid",
]

COCO_SIZE_NAMES = ("small", "medium", "large")
COCO_SIZE_THRESHOLDS = (32.0**2, 96.0**2)  # box area upper bounds of small and medium, original-image pixels


# ----------------------------------------------------------------------------------------------- geometry
@dataclasses.dataclass(frozen=True)
class TokenGrid:
    """Where one image's tokens are, per level ``l`` (level-major, row-major token order).

    Attributes:
        shapes: per level ``(h_l, w_l)``.
        starts: per level, index of its first token in the flat sequence.
        centres_y: per level ``(h_l,)`` token row centres in original-image pixels (ascending).
        centres_x: per level ``(w_l,)`` token column centres in original-image pixels (ascending).
        valid: ``(N,)`` bool, False for padded tokens.
    """

    shapes: Tuple[Tuple[int, int], ...]
    starts: Tuple[int, ...]
    centres_y: Tuple[np.ndarray, ...]
    centres_x: Tuple[np.ndarray, ...]
    valid: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.valid.shape[0])


def _sampled_valid(image_extent: int, padded_extent: int, cells: int) -> np.ndarray:
    """Which of ``cells`` token rows (or columns) are inside the image: the padding mask downsampled by nearest
    neighbour, exactly as the model builds its per-level masks (``F.interpolate``, separable per axis)."""
    inside = (torch.arange(padded_extent) < image_extent).float()
    return F.interpolate(inside[None, None], size=cells, mode="nearest")[0, 0].numpy() > 0.5


def token_centres(cells: int, padded_extent: int) -> np.ndarray:
    """The centres ``(cells,)`` of one level's token rows (or columns) in pixels of the padded network input: token
    ``i`` covers ``[i, i + 1) * padded_extent / cells``, as the model's reference points place it (not ``i`` times
    the level's nominal stride, which the rounded-up level sizes do not divide evenly)."""
    return (np.arange(cells) + 0.5) * (padded_extent / cells)


def token_grid(spatial_shapes, image_size, padded_size, original_size) -> TokenGrid:
    """The :class:`TokenGrid` of an image.

    Args:
        spatial_shapes: ``(L, 2)`` per level ``(h_l, w_l)`` (tensor, array or list).
        image_size: ``(h, w)`` of the network input (the resized image, before padding).
        padded_size: ``(H, W)`` of the padded batch the tokens were computed on.
        original_size: ``(height, width)`` of the original image, where the ground-truth boxes are.
    """
    shapes = tuple((int(h), int(w)) for h, w in np.asarray(spatial_shapes).reshape(-1, 2).tolist())
    (h, w), (padded_h, padded_w), (original_h, original_w) = image_size, padded_size, original_size
    scale_y, scale_x = original_h / h, original_w / w
    starts, centres_y, centres_x, valid = [], [], [], []
    start = 0
    for level_h, level_w in shapes:
        starts.append(start)
        centres_y.append(token_centres(level_h, padded_h) * scale_y)
        centres_x.append(token_centres(level_w, padded_w) * scale_x)
        rows, cols = _sampled_valid(h, padded_h, level_h), _sampled_valid(w, padded_w, level_w)
        valid.append((rows[:, None] & cols[None, :]).reshape(-1))
        start += level_h * level_w
    return TokenGrid(shapes, tuple(starts), tuple(centres_y), tuple(centres_x), np.concatenate(valid))


def _cell_ranges(boxes: np.ndarray, centres_y: np.ndarray, centres_x: np.ndarray) -> np.ndarray:
    """boxes ``(G, 4)`` XYXY -> ``(G, 4)`` int ``(i0, i1, j0, j1)``: the token rows ``[i0, i1)`` and columns
    ``[j0, j1)`` of one level whose centres lie inside each box (edges included; i1 == i0 or j1 == j0: none)."""
    i0 = np.searchsorted(centres_y, boxes[:, 1], side="left")
    j0 = np.searchsorted(centres_x, boxes[:, 0], side="left")
    # an inverted or NaN box holds no centre: an empty range, never a negative one
    i1 = np.maximum(np.searchsorted(centres_y, boxes[:, 3], side="right"), i0)
    j1 = np.maximum(np.searchsorted(centres_x, boxes[:, 2], side="right"), j0)
    return np.stack([i0, i1, j0, j1], axis=1)


def _covered(ranges: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """``(h, w)`` bool: tokens inside any of the boxes' cell ranges ``(G, 4)`` (a difference array, then sums)."""
    ranges = ranges[(ranges[:, 1] > ranges[:, 0]) & (ranges[:, 3] > ranges[:, 2])]
    marks = np.zeros((shape[0] + 1, shape[1] + 1), dtype=np.int64)
    i0, i1, j0, j1 = ranges.T
    np.add.at(marks, (i0, j0), 1)
    np.add.at(marks, (i0, j1), -1)
    np.add.at(marks, (i1, j0), -1)
    np.add.at(marks, (i1, j1), 1)
    return marks.cumsum(0).cumsum(1)[: shape[0], : shape[1]] > 0


def _any_in_ranges(grids: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """grids ``(K, h, w)`` bool, ranges ``(G, 4)`` -> ``(K, G)`` bool: whether any True lies in each range
    (summed-area tables: four look-ups per box)."""
    k, h, w = grids.shape
    table = np.zeros((k, h + 1, w + 1), dtype=np.int64)
    table[:, 1:, 1:] = grids.cumsum(1).cumsum(2)
    i0, i1, j0, j1 = ranges.T
    sums = table[:, i1, j1] - table[:, i0, j1] - table[:, i1, j0] + table[:, i0, j0]
    return sums > 0


# ---------------------------------------------------------------------------------------------- counting
@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """One image's annotations: ``boxes`` ``(G, 4)`` XYXY in original-image pixels, ``crowd`` ``(G,)`` bool,
    ``height`` / ``width`` of the original image."""

    boxes: np.ndarray
    crowd: np.ndarray
    height: int
    width: int


def ground_truth_of(dataset_dict: Dict) -> GroundTruth:
    """A detectron2 dataset dict (``annotations`` with ``bbox`` / ``bbox_mode`` / ``iscrowd``) -> GroundTruth."""
    annotations = dataset_dict.get("annotations", [])
    boxes = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    return GroundTruth(
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        crowd=np.asarray([a.get("iscrowd", 0) != 0 for a in annotations], dtype=bool),
        height=int(dataset_dict["height"]),
        width=int(dataset_dict["width"]),
    )


@dataclasses.dataclass
class SelectionCounts:
    """Hits and counts, summed over images (the metrics are ratios of these totals).

    Attributes (E encoder layers, L levels, S size buckets):
        objects: ``(S,)`` non-crowd objects per size.
        reachable: ``(S,)`` those with any valid token centre inside, at any level (the most recall can reach).
        recalled: ``(E, L + 1, S)`` objects with a kept token inside, per layer, per level (last: any level), size.
        kept, kept_hits: ``(E, L)`` kept valid tokens (not crowd-ignored), and those inside a box.
        fine, fine_hits: ``(E, L)`` the same for fine-grained tokens.
        tokens, tokens_inside: ``(L,)`` all valid tokens (not crowd-ignored), and those inside a box: the precision
            a selection drawn at random would have.
        kept_valid, valid: ``(E, L)`` kept valid tokens and ``(L,)`` valid tokens, crowd-ignored ones included: where
            the budget goes.
    """

    objects: np.ndarray
    reachable: np.ndarray
    recalled: np.ndarray
    kept: np.ndarray
    kept_hits: np.ndarray
    fine: np.ndarray
    fine_hits: np.ndarray
    tokens: np.ndarray
    tokens_inside: np.ndarray
    kept_valid: np.ndarray
    valid: np.ndarray

    def __add__(self, other: "SelectionCounts") -> "SelectionCounts":
        fields = (f.name for f in dataclasses.fields(self))
        return SelectionCounts(**{name: getattr(self, name) + getattr(other, name) for name in fields})


def _token_masks(index_lists: Sequence[np.ndarray], num_tokens: int) -> np.ndarray:
    """Per encoder layer token indices -> ``(E, N)`` bool."""
    masks = np.zeros((len(index_lists), num_tokens), dtype=bool)
    for layer, inds in enumerate(index_lists):
        masks[layer, inds] = True
    return masks


def image_selection_counts(
    kept_inds: Sequence[np.ndarray],
    fine_inds: Sequence[np.ndarray],
    grid: TokenGrid,
    truth: GroundTruth,
    size_thresholds: Sequence[float] = COCO_SIZE_THRESHOLDS,
) -> SelectionCounts:
    """The :class:`SelectionCounts` of one image.

    Args:
        kept_inds, fine_inds: per encoder layer, int arrays of token indices into the flat ``(N,)`` sequence.
        grid: the image's :func:`token_grid`.
        truth: its :class:`GroundTruth`.
        size_thresholds: ascending box-area upper bounds of all size buckets but the last.
    """
    num_layers, num_levels = len(kept_inds), len(grid.shapes)
    sizes = np.searchsorted(np.asarray(size_thresholds, dtype=np.float64), _areas(truth.boxes), side="right")
    objects = ~truth.crowd
    num_sizes = len(size_thresholds) + 1
    kept = _token_masks(kept_inds, grid.num_tokens) & grid.valid
    fine = _token_masks(fine_inds, grid.num_tokens) & grid.valid
    inside = np.zeros(grid.num_tokens, dtype=bool)  # centre in a non-crowd box
    ignored = np.zeros(grid.num_tokens, dtype=bool)  # centre in a crowd box only
    found = np.zeros((num_layers, num_levels + 1, int(objects.sum())), dtype=bool)
    reachable = np.zeros(int(objects.sum()), dtype=bool)
    for level, ((h, w), start) in enumerate(zip(grid.shapes, grid.starts)):
        ranges = _cell_ranges(truth.boxes, grid.centres_y[level], grid.centres_x[level])
        span = slice(start, start + h * w)
        inside[span] = _covered(ranges[objects], (h, w)).reshape(-1)
        ignored[span] = _covered(ranges[~objects], (h, w)).reshape(-1) & ~inside[span]
        found[:, level] = _any_in_ranges(kept[:, span].reshape(num_layers, h, w), ranges[objects])
        reachable |= _any_in_ranges(grid.valid[span].reshape(1, h, w), ranges[objects])[0]
    found[:, num_levels] = found[:, :num_levels].any(1)
    counted = ~ignored
    one_hot = np.eye(num_sizes, dtype=np.int64)[sizes[objects]]  # (G_objects, S)
    return SelectionCounts(
        objects=one_hot.sum(0),
        reachable=reachable.astype(np.int64) @ one_hot,
        recalled=found.astype(np.int64) @ one_hot,
        kept=_per_level(kept & counted, grid.starts),
        kept_hits=_per_level(kept & inside, grid.starts),
        fine=_per_level(fine & counted, grid.starts),
        fine_hits=_per_level(fine & inside, grid.starts),
        tokens=_per_level((grid.valid & counted)[None], grid.starts)[0],
        tokens_inside=_per_level((grid.valid & inside)[None], grid.starts)[0],
        kept_valid=_per_level(kept, grid.starts),
        valid=_per_level(grid.valid[None], grid.starts)[0],
    )


def _per_level(masks: np.ndarray, starts: Sequence[int]) -> np.ndarray:
    """``(E, N)`` bool -> ``(E, L)`` counts of True per level."""
    return np.add.reduceat(masks.astype(np.int64), np.asarray(starts), axis=1)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


# ----------------------------------------------------------------------------------------------- metrics
def _percent(hits, counts) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, 100.0 * np.asarray(hits, dtype=np.float64) / counts, np.nan)


def selection_quality_metrics(counts: SelectionCounts, size_names: Sequence[str] = COCO_SIZE_NAMES) -> Dict[str, float]:
    """Totals -> flat ``{name: percent}`` (NaN where nothing was counted) plus object counts:

    - ``object_recall/layerE`` (any level, any size), ``object_recall/layerE/levelL``, ``object_recall/layerE/small``
      (any level; also ``medium``, ``large``);
    - ``foreground_precision/layerE[/levelL]``, ``fine_grained_hit_rate/layerE[/levelL]``;
    - ``kept_share/layerE/levelL``: the share of the level's valid tokens the layer keeps (where the budget goes);
    - ``foreground_share[/levelL]``: the share of all valid tokens inside a box, a random selection's precision;
    - ``object_recall_ceiling[/small|medium|large]``: the share of objects with any valid token centre inside, the
      most recall can reach (keeping every token);
    - ``num_objects[/small|medium|large]``.
    """
    num_layers, num_levels = counts.kept.shape
    by_size = _percent(counts.recalled[:, num_levels], counts.objects[None])  # (E, S), any level
    recall = _percent(counts.recalled.sum(2), counts.objects.sum())  # (E, L + 1), last: any level
    metrics = {"num_objects": float(counts.objects.sum())}
    metrics.update({f"num_objects/{name}": float(n) for name, n in zip(size_names, counts.objects)})
    metrics["object_recall_ceiling"] = float(_percent(counts.reachable.sum(), counts.objects.sum()))
    metrics.update({f"object_recall_ceiling/{name}": float(value)
                    for name, value in zip(size_names, _percent(counts.reachable, counts.objects))})
    _add_levels(metrics, "foreground_share", counts.tokens_inside, counts.tokens)
    for e in range(num_layers):
        metrics[f"object_recall/layer{e}"] = float(recall[e, num_levels])
        metrics.update({f"object_recall/layer{e}/{name}": float(by_size[e, s]) for s, name in enumerate(size_names)})
        metrics.update({f"object_recall/layer{e}/level{l}": float(recall[e, l]) for l in range(num_levels)})
        _add_levels(metrics, f"foreground_precision/layer{e}", counts.kept_hits[e], counts.kept[e])
        _add_levels(metrics, f"fine_grained_hit_rate/layer{e}", counts.fine_hits[e], counts.fine[e])
        _add_levels(metrics, f"kept_share/layer{e}", counts.kept_valid[e], counts.valid, overall=False)
    return metrics


def _add_levels(metrics: Dict[str, float], name: str, hits: np.ndarray, totals: np.ndarray, overall: bool = True):
    """``name/levelL`` for each level of ``hits`` / ``totals`` ``(L,)`` and, with ``overall``, ``name`` itself."""
    if overall:
        metrics[name] = float(_percent(hits.sum(), totals.sum()))
    metrics.update({f"{name}/level{l}": float(value) for l, value in enumerate(_percent(hits, totals))})


def format_selection_quality(metrics: Dict[str, float], size_names: Sequence[str] = COCO_SIZE_NAMES) -> str:
    """Two tables (percent) of :func:`selection_quality_metrics`: per encoder layer over all levels (recall also by
    object size), then per layer and feature level."""
    from tabulate import tabulate

    num_layers = sum(1 for key in metrics if key.startswith("object_recall/") and key.count("/") == 1)
    num_levels = sum(1 for key in metrics if key.startswith("object_recall/layer0/level"))
    shown = lambda value: "nan" if np.isnan(value) else f"{value:.1f}"  # noqa: E731
    summary = [
        [e, *(shown(metrics[f"object_recall/layer{e}{suffix}"]) for suffix in ["", *(f"/{n}" for n in size_names)])]
        + [shown(metrics[f"foreground_precision/layer{e}"]), shown(metrics[f"fine_grained_hit_rate/layer{e}"])]
        for e in range(num_layers)
    ]
    names = ("kept_share", "object_recall", "foreground_precision", "fine_grained_hit_rate")
    by_level = [
        [e, level, *(shown(metrics[f"{name}/layer{e}/level{level}"]) for name in names)]
        for e in range(num_layers)
        for level in range(num_levels)
    ]
    objects = ", ".join(f"{n} {int(metrics[f'num_objects/{n}'])}" for n in size_names)
    ceiling = metrics.get("object_recall_ceiling", np.nan)
    if ceiling < 100.0:  # some objects hold no token centre at any level: no selection can recall them
        objects += ("; recall can reach at most " + shown(ceiling) + " ("
                    + ", ".join(f"{n} {shown(metrics[f'object_recall_ceiling/{n}'])}" for n in size_names)
                    + "): the others hold no token centre at any level")
    shares = ", ".join(shown(metrics[f"foreground_share/level{level}"]) for level in range(num_levels))
    headers = ["layer", "recall", *(f"recall {n}" for n in size_names), "fg precision", "fine hit rate"]
    return (
        f"Token selection quality (%; totals over {int(metrics['num_objects'])} objects: {objects}):\n"
        + tabulate(summary, headers=headers, tablefmt="pipe", disable_numparse=True)
        + f"\nAll valid tokens inside a box (a random selection's precision): {shown(metrics['foreground_share'])}"
        + f" (per level: {shares})\nPer feature level:\n"
        + tabulate(
            by_level, headers=["layer", "level", "kept", "recall", "fg precision", "fine hit rate"], tablefmt="pipe",
            disable_numparse=True,
        )
    )
