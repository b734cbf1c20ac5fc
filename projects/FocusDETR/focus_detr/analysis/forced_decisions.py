"""The official ranking decisions, taken by our model once checked (what a parity check compares outputs under).

Focus-DETR ranks tokens three times: the foreground tokens of each encoder layer, the fine-grained tokens among
them, and the proposals that become decoder queries (a query's rank picks its learnt content embedding). Scores that
agree to 1e-6 still order near-ties differently on another CPU, thread count or kernel, and at full size (thousands
of tokens, 900 queries) some pair almost always swaps, which changes those queries' outputs completely. So at each
ranking step the official choice, where the fixture records it, is first checked against our scores (it must be our
choice up to scores within ``RANK_REL_TOL`` of each other) and then taken; the outputs can then be compared at tight
tolerances.
"""
import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .parity import BOX_TOL, Report

__all__ = ["RANK_REL_TOL", "ForcedDecisions", "check_ranking", "nearest_rows", "ranking_gap", "single_decisions"]

RANK_REL_TOL = 1e-4  # of the largest |score| of a ranking: closer scores are a tie that either order may break


def ranking_gap(
    scores: torch.Tensor, ours: torch.Tensor, other: torch.Tensor, ordered: bool
) -> Tuple[int, float, float]:
    """How far choice ``other`` is from our choice ``ours`` under ``scores``: scores ``(B, n)``, choices ``(B, k)`` of
    indices, compared rank by rank (``ordered``) or as sets. Returns (how many choices differ, the largest score gap
    between them, the tolerance): ``other`` is our choice up to ties when the gap is within the tolerance,
    ``RANK_REL_TOL`` of the largest finite |score| (at least 1). Equal scores, infinite ones included (padding), are
    a zero gap; a clearly better token left out, or a clearly worse one taken, shows as a larger gap."""
    other = other.to(scores.device)
    ours_scores, other_scores = scores.gather(1, ours), scores.gather(1, other)
    if ordered:
        differ = int((ours != other).sum())
    else:
        ours_scores, other_scores = ours_scores.sort(1)[0], other_scores.sort(1)[0]
        differ = sum(len(set(a.tolist()) - set(b.tolist())) for a, b in zip(ours, other))
    gaps = torch.where(ours_scores == other_scores, 0.0, (ours_scores - other_scores).abs())
    gap = gaps.max().item() if gaps.numel() else 0.0
    finite = scores[scores.isfinite()]
    return differ, gap, RANK_REL_TOL * max(1.0, finite.abs().max().item() if finite.numel() else 0.0)


def check_ranking(
    report: Report, name: str, scores: torch.Tensor, ours: torch.Tensor, official: torch.Tensor, ordered: bool
) -> bool:
    """Whether the official choice is our choice up to ties (:func:`ranking_gap`), as a row of ``report``."""
    if ours.shape != official.shape:
        report.add(name, f"{official.shape[1]} vs our {ours.shape[1]}", "same count", False)
        return False
    differ, gap, tolerance = ranking_gap(scores, ours, official, ordered)
    report.add(name, f"{differ} differ, gap {gap:.1e}", f"gap <= {tolerance:.1e}", gap <= tolerance)
    return gap <= tolerance


def nearest_rows(reference: torch.Tensor, candidates: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """For each row of reference ``(B, Q, D)`` the index of the closest row (max-abs) of candidates ``(B, N, D)``
    -> ``(B, Q)`` indices, and the largest such distance."""
    distances = torch.cdist(reference.to(candidates), candidates, p=float("inf"))
    closest, inds = distances.min(-1)
    return inds, closest.max().item() if closest.numel() else 0.0


class ForcedDecisions:
    """While active, the model takes the official ranking decisions, each checked first (see the module docstring).

    Args:
        model: a FocusDETR.
        report: where each check goes; rows are named ``prefix`` + the decision.
        foreground_inds: per encoder layer ``(B, k_j)`` the official foreground tokens, or None.
        fine_grained: per encoder layer ``(B, m)`` the official fine-grained positions among the layer's foreground
            tokens, or None (only taken when ``foreground_inds`` is, as positions refer to the official order).
        query_boxes: ``(B, Q, 4)`` the official proposals that became queries, as sigmoid boxes, or None; they are
            found among our proposals by their boxes.
        take_unchecked: take the official decisions even where the checks fail (their rows still show the gaps),
            to compare reduced-precision arithmetic with the same decisions.
    """

    def __init__(
        self,
        model,
        report: Report,
        prefix: str,
        foreground_inds: Optional[List[torch.Tensor]] = None,
        fine_grained: Optional[List[torch.Tensor]] = None,
        query_boxes: Optional[torch.Tensor] = None,
        take_unchecked: bool = False,
    ):
        self.model, self.report, self.prefix = model, report, prefix
        self.take_unchecked = take_unchecked
        self.foreground_inds, self.fine_grained, self.query_boxes = foreground_inds, fine_grained, query_boxes
        self.forced_foreground = False
        self.proposals = self.memory = None
        self.undo: List[Callable] = []

    def __enter__(self):
        transformer = self.model.transformer
        if self.foreground_inds is not None:
            handle = transformer.foreground_selector.register_forward_hook(self._force_foreground)
            self.undo.append(handle.remove)
        if self.fine_grained is not None:
            for j, layer in enumerate(transformer.encoder.layers):
                self._patch(layer, "select_fine_grained", self._fine_grained_chooser(j, layer.select_fine_grained))
        if self.query_boxes is not None:
            # Our proposal boxes, to find the official queries by: the encoder box head over every token plus the
            # token proposals (the transformer itself runs the box head on the chosen tokens only).
            proposals_of = transformer.two_stage_proposals

            def proposals_and_keep(*args):
                self.proposals = proposals_of(*args)
                return self.proposals

            self._patch(transformer, "two_stage_proposals", proposals_and_keep)
            handle = transformer.encoder.register_forward_hook(
                lambda module, inputs, output: setattr(self, "memory", output[0])
            )
            self.undo.append(handle.remove)
            self._patch(transformer, "select_queries", self._query_chooser(transformer.select_queries))
        return self

    def __exit__(self, *exc):
        for undo in reversed(self.undo):
            undo()
        self.undo.clear()

    def _patch(self, obj, name: str, replacement: Callable):
        setattr(obj, name, replacement)
        self.undo.append(lambda: delattr(obj, name))

    def _force_foreground(self, module, inputs, selection):
        # The official code computes its 6-entry cascade whatever the encoder depth; layers past ours are unused.
        official = [inds.to(selection.selection_scores.device) for inds in self.foreground_inds]
        official = official[: len(selection.foreground_inds)]
        ours_counts = selection.num_selected_tokens_per_layer
        official_counts = [inds.shape[1] for inds in official]
        if ours_counts != official_counts:
            self.report.add(f"{self.prefix}tokens per layer", str(ours_counts), str(official_counts), False)
            return selection
        self.report.add(f"{self.prefix}tokens per layer", str(ours_counts), "identical", True)
        for j, (ours, theirs) in enumerate(zip(selection.foreground_inds, official)):
            check_ranking(
                self.report, f"{self.prefix}layer{j} foreground tokens", selection.selection_scores.float(), ours,
                theirs, False,
            )
        self.forced_foreground = True
        return dataclasses.replace(selection, foreground_inds=official)

    def _fine_grained_chooser(self, layer_index: int, choose: Callable) -> Callable:
        def choose_official(category_scores):
            ours = choose(category_scores)
            if not self.forced_foreground:
                return ours
            official = self.fine_grained[layer_index].to(ours.device)
            name = f"{self.prefix}layer{layer_index} fine-grained tokens"
            agrees = check_ranking(self.report, name, category_scores.float(), ours, official, False)
            return official if agrees or self.take_unchecked else ours

        return choose_official

    def _proposal_boxes(self) -> torch.Tensor:
        """``(B, N, 4)`` sigmoid boxes of every token's two-stage proposal in the current forward."""
        transformer = self.model.transformer
        proposals, ignored = self.proposals
        with torch.no_grad():  # only searched, never part of a loss
            return (self.model.bbox_embed[-1](transformer.project_memory(self.memory, ignored)) + proposals).sigmoid()

    def _query_chooser(self, choose: Callable) -> Callable:
        def choose_official(proposal_scores):
            ours = choose(proposal_scores)
            proposal_boxes = self._proposal_boxes()
            official, distance = nearest_rows(self.query_boxes, proposal_boxes)
            found = distance <= BOX_TOL
            # Tokens with the same box (e.g. padding, whose proposals are all infinite) are interchangeable: keep ours.
            ours_boxes = proposal_boxes.gather(1, ours[..., None].expand(-1, -1, 4))
            if ours_boxes.shape == self.query_boxes.shape:
                same_box = (ours_boxes - self.query_boxes.to(ours_boxes)).abs().max(-1)[0] <= BOX_TOL
                official = torch.where(same_box, ours, official)
            self.report.add(f"{self.prefix}query proposals found", distance, f"<= {BOX_TOL:g}", found)
            name = f"{self.prefix}query ranking"
            agrees = found and check_ranking(self.report, name, proposal_scores.float(), ours, official, True)
            return official if agrees or self.take_unchecked else ours

        return choose_official


def single_decisions(expected: Dict) -> Dict:
    """The official ranking decisions recorded for one image, as :class:`ForcedDecisions` arguments."""
    debug = expected.get("debug", {})
    layers = debug.get("encoder_layers", {})
    fine_grained = [layers[j].get("oesm_select_idx") for j in sorted(layers)]
    return {
        "foreground_inds": debug.get("encoder_in", {}).get("foreground_inds"),
        "fine_grained": fine_grained if fine_grained and None not in fine_grained else None,
        "query_boxes": expected.get("enc_outputs", {}).get("pred_boxes"),
    }
