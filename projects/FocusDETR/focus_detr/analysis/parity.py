"""Comparing our model with official Focus-DETR outputs stored in a parity fixture (the format of
``../shared/fixtures``, also written by ``tools/make_parity_fixture.py``): running one image or the training losses
the way the fixture recorded them, and the rows of the comparison with their tolerances. ``tools/check_parity.py``
is the command line; :mod:`.forced_decisions` makes the model take the official ranking decisions first.

A fixture is a dict: ``state_dict`` (official or our layout), ``inputs`` (images with their sizes and instances),
``eval_outputs["single"]`` (per image: ``pred_logits``, ``pred_boxes``, ``postprocessed`` detections and the
ranking decisions under ``debug``) and ``train_losses`` (per name: ``losses``, and for denoising the recorded
``dn_inputs``). A fixture without images, without an official output per image, or whose ``train_losses`` is not
a dict of such entries is refused (:func:`missing_sections`): a check of part of it would pass on what it never
compared. An empty ``train_losses`` is allowed (inference only), and said in the verdict.

Each training run starts right after ``torch.manual_seed(seed)``: the entry's ``seed``, else
:data:`TRAIN_SEED` (42, the official fixture recipe's seed of its ``dn`` run). A deterministic model does not
care; one with stochastic depth (the Swin backbones' ``drop_path_rate``) draws from it in training, in the same
order as the official code, so its losses compare only when both runs start from the same seed
(:func:`random_in_training` names what draws).
"""
from typing import Dict, List, Optional

import torch
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from omegaconf import OmegaConf
from torch.torch_version import TorchVersion

from ..checkpoint import read_weights_file
from ..checkpoint.official import convert_official_state_dict, is_official_layout
from ..engine.config import flattened
from ..modeling import DenoisingQueries

__all__ = [
    "AMP_BOX_TOL",
    "BOX_TOL",
    "LOGIT_TOL",
    "LOSS_REL_TOL",
    "SCORE_TOL",
    "TOP_DETECTIONS",
    "TRAIN_SEED",
    "Report",
    "compare_losses",
    "compare_single",
    "load_fixture",
    "match_detections",
    "missing_sections",
    "model_setting_differences",
    "random_in_training",
    "run_single",
    "run_train_losses",
    "to_batched_input",
    "weight_mismatch",
]

BOX_TOL = 1e-4  # normalised cxcywh
LOGIT_TOL = 1e-3
SCORE_TOL = 1e-4  # detection probabilities
LOSS_REL_TOL = 1e-4
TOP_DETECTIONS = 100
TRAIN_SEED = 42
AMP_BOX_TOL = 0.01  # under autocast: a box within 1% of the image size counts as the same detection
# What check_parity compares per image, as the official fixture and make_parity_fixture.py record it.
SINGLE_KEYS = ("pred_logits", "pred_boxes", "postprocessed")


def load_fixture(path: str) -> Dict:
    """The parity fixture at ``path``, read without running code from it; ValueError when it is not one."""
    # The fixture stores a torch version object besides tensors and plain containers.
    fixture = read_weights_file(path, torch_safe_globals=[TorchVersion]).content
    if not isinstance(fixture, dict) or "state_dict" not in fixture or "inputs" not in fixture:
        raise ValueError(f"cannot use fixture {path}: it is not a parity fixture (a dict with 'state_dict' and "
                         "'inputs')")
    missing = missing_sections(fixture)
    if missing:
        # Checking only part of a fixture would print PARITY OK for what was never compared.
        raise ValueError(f"cannot use fixture {path}: it lacks what the parity check compares: {'; '.join(missing)}")
    return fixture


def _section(container, key):
    return container.get(key) if isinstance(container, dict) else None


def missing_sections(fixture: Dict) -> List[str]:
    """What a fixture lacks of the sections a parity check compares (the official fixture's ``inputs``,
    ``eval_outputs["single"]`` with one entry per input, ``train_losses`` a dict whose entries hold ``losses``; the
    tiny official fixture's are ``no_dn`` and ``dn``, an empty one means inference only), each said in a few words;
    empty when it has them all."""
    inputs = fixture.get("inputs")
    missing = [] if isinstance(inputs, list) and inputs else ["inputs (no images)"]
    single = _section(fixture.get("eval_outputs"), "single")
    if not isinstance(single, list) or not single:
        missing.append("eval_outputs['single'] (the official outputs of each image)")
    elif not missing and len(single) != len(inputs):
        missing.append(f"eval_outputs['single'] has {len(single)} entries for {len(inputs)} inputs")
    else:
        for i, entry in enumerate(single):
            absent = [key for key in SINGLE_KEYS if _section(entry, key) is None]
            if absent:
                missing.append(f"eval_outputs['single'][{i}] has no {', '.join(absent)}")
    runs = fixture.get("train_losses")
    if not isinstance(runs, dict):
        missing.append("train_losses (the official training losses per run; {} for inference only)")
    else:
        absent = [name for name, entry in runs.items() if not _section(entry, "losses")]
        if absent:
            missing.append(f"the losses of train_losses {', '.join(repr(n) for n in absent)}")
    return missing


def to_batched_input(item: Dict, with_instances: bool) -> Dict:
    """A fixture input as a detectron2 input dict (with its ground truth as ``Instances`` when ``with_instances``)."""
    out = {"image": item["image"], "height": item["height"], "width": item["width"]}
    if with_instances:
        inst = item["instances"]
        out["instances"] = Instances(
            tuple(inst["image_size"]), gt_boxes=Boxes(inst["gt_boxes"]), gt_classes=inst["gt_classes"]
        )
    return out


class Report:
    """The rows of a comparison: (check, value, tolerance, within it)."""

    def __init__(self):
        self.rows = []

    def add(self, name: str, value, tolerance: str, ok: bool):
        self.rows.append((name, value, tolerance, ok))

    @property
    def ok(self) -> bool:
        # A comparison that compared nothing has not shown parity.
        return bool(self.rows) and all(row[3] for row in self.rows)

    def print(self):
        width = max(len(r[0]) for r in self.rows) if self.rows else 10
        print(f"{'check':<{width}}  {'value':>22}  {'tolerance':>14}  result")
        for name, value, tolerance, ok in self.rows:
            value_text = f"{value:.3e}" if isinstance(value, float) else str(value)
            print(f"{name:<{width}}  {value_text:>22}  {tolerance:>14}  {'ok' if ok else 'FAIL'}")


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


def model_setting_differences(cfg_a, cfg_b) -> int:
    """How many settings of ``model`` (dotted keys of the config tree, the classes included; a list is one setting)
    two configs do not share."""
    a, b = (flattened(OmegaConf.to_container(cfg.model, resolve=True)) for cfg in (cfg_a, cfg_b))
    # compared as text: a value may be anything a config holds, also what == does not answer with one bool
    return sum(key not in a or key not in b or repr(a[key]) != repr(b[key]) for key in a.keys() | b.keys())


def random_in_training(model) -> List[str]:
    """What in ``model`` draws random numbers in training mode: stochastic depth (modules with a ``drop_prob``, as
    timm's DropPath in detectron2's Swin) and dropout with a probability above 0, as ``"<kind> <p> (<n> modules)"``."""
    found = {}
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            kind, probability = "dropout", module.p
        else:
            kind, probability = "stochastic depth", getattr(module, "drop_prob", 0.0)
        if isinstance(probability, (int, float)) and probability > 0:
            found.setdefault(kind, []).append(float(probability))
    return [f"{kind} up to {max(values):g} ({len(values)} modules)" for kind, values in found.items()]


@torch.no_grad()
def run_train_losses(model, inputs: List[Dict], dn_inputs, seed: int = TRAIN_SEED) -> Dict[str, float]:
    """The weighted training losses of ``inputs`` as one batch, started right after ``torch.manual_seed(seed)``; with
    ``dn_inputs`` (the fixture's recorded denoising queries) or without denoising (None)."""
    batched = [to_batched_input(item, with_instances=True) for item in inputs]
    model.train()
    torch.manual_seed(seed)
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

