#!/usr/bin/env python
"""Checks a configuration against official Focus-DETR outputs stored in a parity fixture.

    python tools/check_parity.py --fixture ../shared/fixtures/focus_detr_tiny.pt \
        [--config-file CONFIG] [--output ours.pt] [key=value ...]

Loads ``fixture["state_dict"]`` (official layout) through the checkpoint loader, runs eval-mode inference on each
fixture input alone, and the training losses when the fixture has them (``no_dn`` as is; ``dn`` with the fixture's
recorded denoising queries injected). Prints a comparison table and exits non-zero when out of tolerance. Without
``--config-file``, or when the weights do not fit it (reported), the configuration is the first of
``CANDIDATE_CONFIGS`` whose model the weights fit exactly.

Ranking decisions are teacher-forced. Focus-DETR ranks tokens three times: the foreground tokens of each encoder
layer, the fine-grained tokens among them, and the proposals that become decoder queries (a query's rank picks its
learnt content embedding). Scores that agree to 1e-6 still order near-ties differently on another CPU, thread count
or kernel, and at full size (thousands of tokens, 900 queries) some pair almost always swaps, which changes those
queries' outputs completely. So at each ranking step the official choice, where the fixture records it, is first
checked against our scores (it must be our choice up to scores within ``RANK_REL_TOL`` of each other) and then taken;
the outputs are then compared at tight tolerances. ``--output`` saves these forced outputs.

``--amp bfloat16`` (or ``float16``) runs our model under autocast and reports its deviation instead of checking
parity: the official decisions are taken even where our reduced-precision scores rank them otherwise (so the
arithmetic is compared query by query), and each image also runs on its own decisions; both report how many of the
official top detections have a same-label detection of ours within ``AMP_BOX_TOL`` of the image size. It never
prints PARITY OK: the float32 tolerances do not apply.
"""
import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch.torch_version import TorchVersion

from focus_detr.checkpoint import FocusDETRCheckpointer, read_weights_file
from focus_detr.checkpoint.official import convert_official_state_dict, is_official_layout
from focus_detr.engine import amp_autocast, atomic_write, resolve_amp_dtype
from focus_detr.engine.arguments import add_overrides_argument, parse_args_with_overrides
from focus_detr.engine.cli import run_reporting_errors
from focus_detr.layers.ms_deform_attn_backends import select_backend
from focus_detr.modeling import DenoisingQueries

BOX_TOL = 1e-4  # normalised cxcywh
LOGIT_TOL = 1e-3
SCORE_TOL = 1e-4  # detection probabilities
LOSS_REL_TOL = 1e-4
RANK_REL_TOL = 1e-4  # of the largest |score| of a ranking: closer scores are a tie that either order may break
TOP_DETECTIONS = 100
AMP_BOX_TOL = 0.01  # --amp: a box within 1% of the image size counts as the same detection

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tried in order when --config-file is not given; weights cannot tell the R50 12-epoch model from the 24/36-epoch
# ones (position-embedding temperature 20): pass --config-file for those.
CANDIDATE_CONFIGS = [
    "configs/testing/focus_detr_tiny_fixture.py",
    "configs/focus_detr_r50_4scale_12ep.py",
    "configs/focus_detr_r101_4scale_12ep.py",
    "configs/focus_detr_swin_tiny_224_4scale_12ep.py",
    "configs/focus_detr_swin_base_384_22k_4scale_36ep.py",
    "configs/focus_detr_swin_large_384_22k_4scale_36ep.py",
]


def load_fixture(path: str) -> Dict:
    # The fixture stores a torch version object besides tensors and plain containers.
    fixture = read_weights_file(path, torch_safe_globals=[TorchVersion]).content
    if not isinstance(fixture, dict) or "state_dict" not in fixture or "inputs" not in fixture:
        raise ValueError(f"cannot use fixture {path}: it is not a parity fixture (a dict with 'state_dict' and 'inputs')")
    return fixture


def to_batched_input(item: Dict, with_instances: bool) -> Dict:
    out = {"image": item["image"], "height": item["height"], "width": item["width"]}
    if with_instances:
        inst = item["instances"]
        out["instances"] = Instances(
            tuple(inst["image_size"]), gt_boxes=Boxes(inst["gt_boxes"]), gt_classes=inst["gt_classes"]
        )
    return out


class Report:
    def __init__(self):
        self.rows = []

    def add(self, name: str, value, tolerance: str, ok: bool):
        self.rows.append((name, value, tolerance, ok))

    @property
    def ok(self) -> bool:
        return all(row[3] for row in self.rows)

    def print(self):
        width = max(len(r[0]) for r in self.rows) if self.rows else 10
        print(f"{'check':<{width}}  {'value':>22}  {'tolerance':>14}  result")
        for name, value, tolerance, ok in self.rows:
            value_text = f"{value:.3e}" if isinstance(value, float) else str(value)
            print(f"{name:<{width}}  {value_text:>22}  {tolerance:>14}  {'ok' if ok else 'FAIL'}")


def check_ranking(
    report: Report, name: str, scores: torch.Tensor, ours: torch.Tensor, official: torch.Tensor, ordered: bool
) -> bool:
    """Whether the official choice is our choice up to ties: scores ``(B, n)``, choices ``(B, k)`` of indices.

    Compares the chosen scores rank by rank (``ordered``) or as sorted sets; a clearly better token left out, or a
    clearly worse one taken, shows as a gap above ``RANK_REL_TOL`` of the largest |score|.
    """
    if ours.shape != official.shape:
        report.add(name, f"{official.shape[1]} vs our {ours.shape[1]}", "same count", False)
        return False
    official = official.to(scores.device)
    ours_scores, official_scores = scores.gather(1, ours), scores.gather(1, official)
    if ordered:
        differ = int((ours != official).sum())
    else:
        ours_scores, official_scores = ours_scores.sort(1)[0], official_scores.sort(1)[0]
        differ = sum(len(set(a.tolist()) - set(b.tolist())) for a, b in zip(ours, official))
    gap = (ours_scores - official_scores).abs().max().item() if ours.numel() else 0.0
    tol = RANK_REL_TOL * max(1.0, scores.abs().max().item())
    report.add(name, f"{differ} differ, gap {gap:.1e}", f"gap <= {tol:.1e}", gap <= tol)
    return gap <= tol


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


@torch.no_grad()
def run_single(model, item: Dict) -> Dict:
    """Eval outputs of one image alone, in the fixture's ``eval_outputs["single"][i]`` format."""
    batched = [to_batched_input(item, with_instances=False)]
    images = model.preprocess_image(batched)
    out = model.run_transformer(images)
    logits, boxes = model.predict(out)
    result = model.postprocess(logits[-1], boxes[-1], images.image_sizes)[0]
    instances = detector_postprocess(result, item["height"], item["width"])
    return {
        "pred_logits": logits[-1].float().cpu(),
        "pred_boxes": boxes[-1].float().cpu(),
        "postprocessed": [
            {
                "boxes_xyxy": instances.pred_boxes.tensor.float().cpu(),
                "scores": instances.scores.float().cpu(),
                "labels": instances.pred_classes.cpu(),
                "num": len(instances),
            }
        ],
        "num_selected_tokens_per_layer": out.selection.num_selected_tokens_per_layer,
    }


@torch.no_grad()
def run_train_losses(model, inputs: List[Dict], dn_inputs) -> Dict[str, float]:
    batched = [to_batched_input(item, with_instances=True) for item in inputs]
    model.train()
    try:
        if dn_inputs is None:
            dn_number = model.denoising.dn_number
            model.denoising.dn_number = 0
            try:
                losses = model.forward_training(batched)
            finally:
                model.denoising.dn_number = dn_number
        else:
            denoising = DenoisingQueries(
                query_label=dn_inputs["input_query_label"].to(model.device),
                query_bbox=dn_inputs["input_query_bbox"].to(model.device),
                attn_mask=dn_inputs["attn_mask"].to(model.device),
                single_padding=int(dn_inputs["dn_meta"]["single_padding"]),
                dn_num=int(dn_inputs["dn_meta"]["dn_num"]),
            )
            losses = model.forward_training(batched, denoising=denoising)
    finally:
        model.eval()
    return {k: float(v) for k, v in losses.items()}


def match_detections(ours: Dict, expected: Dict, box_tol_px: float, score_tol: Optional[float] = SCORE_TOL):
    """How many of the official top detections have a counterpart among ours (same label, score within
    ``score_tol`` unless None, box within ``box_tol_px``), each of ours used once, as (matched, count). Near-equal
    scores may come in either order, so counterparts are searched over all our detections."""
    count = min(TOP_DETECTIONS, len(expected["labels"]))
    used = torch.zeros(len(ours["labels"]), dtype=torch.bool)
    matched = 0
    for i in range(count):
        candidates = (
            (ours["labels"] == expected["labels"][i])
            & ((ours["boxes_xyxy"] - expected["boxes_xyxy"][i]).abs().max(-1)[0] <= box_tol_px)
            & ~used
        )
        if score_tol is not None:
            candidates &= (ours["scores"] - expected["scores"][i]).abs() <= score_tol
        candidates = candidates.nonzero()
        if len(candidates):
            used[candidates[0, 0]] = True
            matched += 1
    return matched, count


def compare_single(report: Report, prefix: str, ours: Dict, expected: Dict, item: Dict):
    delta = (ours["pred_boxes"] - expected["pred_boxes"]).abs().max().item()
    report.add(f"{prefix}max |d pred_boxes|", delta, f"<= {BOX_TOL:g}", delta <= BOX_TOL)
    delta = (ours["pred_logits"] - expected["pred_logits"]).abs().max().item()
    report.add(f"{prefix}max |d pred_logits|", delta, f"<= {LOGIT_TOL:g}", delta <= LOGIT_TOL)
    ours_det, expected_det = ours["postprocessed"][0], expected["postprocessed"][0]
    count = min(len(ours_det["scores"]), len(expected_det["scores"]))
    delta = (ours_det["scores"][:count] - expected_det["scores"][:count]).abs().max().item() if count else 0.0
    same_count = len(ours_det["scores"]) == len(expected_det["scores"])
    report.add(f"{prefix}detections: count, max |d sorted score|", f"{len(ours_det['scores'])}, {delta:.1e}",
               f"same, <= {SCORE_TOL:g}", same_count and delta <= SCORE_TOL)
    box_tol_px = BOX_TOL * max(item["height"], item["width"])
    matched, total = match_detections(ours_det, expected_det, box_tol_px)
    report.add(f"{prefix}top-{TOP_DETECTIONS} detections matched", f"{matched}/{total}", "all", matched == total)


def compare_losses(report: Report, name: str, ours: Dict[str, float], expected: Dict[str, float]):
    for key, value in expected.items():
        if key not in ours:
            report.add(f"{name} {key}", "missing", "present", False)
            continue
        rel = abs(ours[key] - float(value)) / max(abs(float(value)), 1e-12)
        if float(value) == 0.0:
            rel = abs(ours[key])
        report.add(f"{name} {key} rel. error", rel, f"<= {LOSS_REL_TOL:g}", rel <= LOSS_REL_TOL)


def weight_mismatch(model, state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    """None when a detector state dict (ours or official layout) has exactly the model's keys and shapes, else what
    differs."""
    if is_official_layout(state_dict):
        state_dict = convert_official_state_dict(state_dict)
    ours = model.state_dict()
    missing, unexpected = sorted(ours.keys() - state_dict.keys()), sorted(state_dict.keys() - ours.keys())
    shapes = [k for k in state_dict if k in ours and ours[k].shape != state_dict[k].shape]
    problems = [f"{len(v)} {what}, e.g. {v[0]}" for what, v in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if v]
    return "; ".join(problems) or None


def build_model(config_file: Optional[str], opts: List[str], state_dict: Dict[str, torch.Tensor]):
    """The model of ``config_file`` if the weights fit it, else of the first candidate configuration they fit (the
    weights fix the architecture; a config that cannot hold them is reported, not fatal). Returns the model and the
    config used."""
    requested = Path(config_file).resolve() if config_file else None
    candidates = [config_file] if config_file else []
    candidates += [str(REPO_ROOT / c) for c in CANDIDATE_CONFIGS if REPO_ROOT / c != requested]
    for candidate in candidates:
        model = instantiate(LazyConfig.apply_overrides(LazyConfig.load(candidate), opts).model)
        mismatch = weight_mismatch(model, state_dict)
        if mismatch is None:
            print(f"config: {candidate}")
            return model, candidate
        if candidate == config_file:
            print(f"WARNING: the fixture's weights do not fit {config_file} ({mismatch}); trying the candidate configs")
    raise ValueError(
        "the fixture's weights fit none of the candidate configurations (" + ", ".join(CANDIDATE_CONFIGS) + "); "
        "pass the --config-file they were made with"
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", help="default: the candidate configuration the fixture's weights fit")
    parser.add_argument("--fixture", required=True)
    parser.add_argument("--output", help="save our (decision-forced) outputs in the fixture's format")
    parser.add_argument("--device", default="cpu", help="run our model here (e.g. cuda, against a CPU-made fixture)")
    parser.add_argument("--amp", metavar="PRECISION",
                        help="autocast (bfloat16, float16, auto): report the deviation instead of checking parity")
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    torch.set_num_threads(2)
    fixture = load_fixture(args.fixture)
    model, config_file = build_model(args.config_file, args.opts, fixture["state_dict"])
    model.eval()
    FocusDETRCheckpointer(model).load_model_state(fixture["state_dict"], source=args.fixture)
    model.to(args.device)
    if torch.device(args.device).type == "cuda":
        # The tolerances assume float32 arithmetic; cuDNN's default TF32 convolutions keep 10 mantissa bits.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    amp_dtype = resolve_amp_dtype(args.amp, args.device, key="--amp") if args.amp else None
    backend = select_backend(torch.empty(0, device=args.device, dtype=amp_dtype or torch.float32))
    print(f"deformable attention backend: {backend} (set FOCUS_DETR_MSDA_BACKEND=pytorch|cpu to choose)")
    report = Report()
    saved = {"single": [], "train_losses": {}}
    expected_single = fixture.get("eval_outputs", {}).get("single", [])
    unchecked = amp_dtype is not None
    for i, item in enumerate(fixture["inputs"]):
        prefix = f"image{i} "
        expected = expected_single[i] if i < len(expected_single) else {}
        with amp_autocast(args.device, amp_dtype):
            with ForcedDecisions(model, report, prefix, **single_decisions(expected), take_unchecked=unchecked):
                ours = run_single(model, item)
            own_decisions = run_single(model, item) if unchecked else None
        saved["single"].append(ours)
        if expected:
            compare_single(report, prefix, ours, expected, item)
        if expected and own_decisions is not None:
            box_tol_px = AMP_BOX_TOL * max(item["height"], item["width"])
            for decisions, outputs in (("official", ours), ("own", own_decisions)):
                matched, total = match_detections(
                    outputs["postprocessed"][0], expected["postprocessed"][0], box_tol_px, score_tol=None
                )
                report.add(f"{prefix}{decisions} decisions: top-{TOP_DETECTIONS} same label, box within "
                           f"{AMP_BOX_TOL:g}", f"{matched}/{total}", "(reported)", matched == total)
    for name, entry in fixture.get("train_losses", {}).items():
        debug = entry.get("debug", {})
        decisions = {"foreground_inds": debug.get("foreground_inds"), "query_boxes": debug.get("enc_reference")}
        with amp_autocast(args.device, amp_dtype):
            with ForcedDecisions(model, report, f"train[{name}] ", **decisions, take_unchecked=unchecked):
                ours = run_train_losses(model, fixture["inputs"], entry.get("dn_inputs"))
        saved["train_losses"][name] = ours
        compare_losses(report, f"train[{name}]", ours, entry["losses"])

    if args.output:
        atomic_write(args.output, lambda f: torch.save(saved, f))
        print(f"wrote {args.output}")
    report.print()
    if amp_dtype is not None:
        # A deviation report: whatever the rows say, reduced precision is not parity.
        print(f"DEVIATION REPORT under {str(amp_dtype).replace('torch.', '')} autocast (official decisions taken "
              "unchecked; the float32 tolerances do not apply): parity is not checked")
        return 0
    verdict = "PARITY OK" if report.ok else "PARITY FAILED"
    if args.config_file not in (None, config_file):
        verdict += f" (with {config_file}: the weights do not fit {args.config_file})"
    print(verdict)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
