#!/usr/bin/env python
"""Checks a configuration against official Focus-DETR outputs stored in a parity fixture.

    python tools/check_parity.py --config-file configs/testing/focus_detr_tiny_fixture.py \
        --fixture ../shared/fixtures/focus_detr_tiny.pt [--output ours.pt] [key=value ...]

Loads ``fixture["state_dict"]`` (official layout) through the checkpoint loader, runs eval-mode inference on each
fixture input alone, and the training losses when the fixture has them (``no_dn`` as is; ``dn`` with the fixture's
recorded denoising queries injected). Prints a comparison table and exits non-zero when out of tolerance.
"""
import argparse
import sys
from typing import Dict, List

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from torch.torch_version import TorchVersion

from focus_detr.checkpoint import FocusDETRCheckpointer
from focus_detr.layers.ms_deform_attn import select_backend
from focus_detr.modeling import DenoisingQueries

BOX_TOL = 1e-4
LOGIT_TOL = 1e-3
LOSS_REL_TOL = 1e-4
TOP_LABELS = 100


def load_fixture(path: str) -> Dict:
    # The fixture stores a torch version object besides tensors and plain containers.
    with torch.serialization.safe_globals([TorchVersion]):
        return torch.load(path, map_location="cpu", weights_only=True)


def to_batched_input(item: Dict, with_instances: bool) -> Dict:
    out = {"image": item["image"], "height": item["height"], "width": item["width"]}
    if with_instances:
        inst = item["instances"]
        out["instances"] = Instances(
            tuple(inst["image_size"]), gt_boxes=Boxes(inst["gt_boxes"]), gt_classes=inst["gt_classes"]
        )
    return out


@torch.no_grad()
def run_single(model, item: Dict) -> Dict:
    """Eval outputs of one image alone, in the fixture's ``eval_outputs["single"][i]`` format."""
    batched = [to_batched_input(item, with_instances=False)]
    images = model.preprocess_image(batched)
    out = model.run_transformer(images)
    logits, boxes = model.predict(out)
    results = model.forward_inference(batched)
    instances = results[0]["instances"]
    selection = out.selection
    return {
        "pred_logits": logits[-1],
        "pred_boxes": boxes[-1],
        "postprocessed": [
            {
                "boxes_xyxy": instances.pred_boxes.tensor,
                "scores": instances.scores,
                "labels": instances.pred_classes,
                "num": len(instances),
            }
        ],
        "num_selected_tokens_per_layer": selection.num_selected_tokens_per_layer,
        "foreground_inds": selection.foreground_inds,
        "fine_grained_inds": out.fine_grained_inds,
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
                query_label=dn_inputs["input_query_label"],
                query_bbox=dn_inputs["input_query_bbox"],
                attn_mask=dn_inputs["attn_mask"],
                single_padding=int(dn_inputs["dn_meta"]["single_padding"]),
                dn_num=int(dn_inputs["dn_meta"]["dn_num"]),
            )
            losses = model.forward_training(batched, denoising=denoising)
    finally:
        model.eval()
    return {k: float(v) for k, v in losses.items()}


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
        print(f"{'check':<{width}}  {'value':>14}  {'tolerance':>12}  result")
        for name, value, tolerance, ok in self.rows:
            value_text = f"{value:.3e}" if isinstance(value, float) else str(value)
            print(f"{name:<{width}}  {value_text:>14}  {tolerance:>12}  {'ok' if ok else 'FAIL'}")


def compare_single(report: Report, index: int, ours: Dict, expected: Dict):
    prefix = f"image{index}"
    debug = expected.get("debug", {})
    encoder_in = debug.get("encoder_in", {})
    num_layers = len(ours["num_selected_tokens_per_layer"])
    if "num_selected_tokens_per_layer" in encoder_in:
        expected_counts = list(encoder_in["num_selected_tokens_per_layer"])[:num_layers]
        report.add(
            f"{prefix} selected tokens per layer",
            str(ours["num_selected_tokens_per_layer"]),
            "identical",
            ours["num_selected_tokens_per_layer"] == expected_counts,
        )
    expected_fg = encoder_in.get("foreground_inds")
    if expected_fg is not None:
        for layer in range(num_layers):
            same = set(ours["foreground_inds"][layer][0].tolist()) == set(expected_fg[layer][0].tolist())
            report.add(f"{prefix} layer{layer} foreground token set", "same" if same else "differs", "identical", same)
            layer_debug = debug.get("encoder_layers", {}).get(layer, {})
            if "oesm_select_idx" in layer_debug:
                expected_fine = expected_fg[layer][0][layer_debug["oesm_select_idx"][0]]
                same = set(ours["fine_grained_inds"][layer][0].tolist()) == set(expected_fine.tolist())
                report.add(
                    f"{prefix} layer{layer} fine-grained token set", "same" if same else "differs", "identical", same
                )
    delta = (ours["pred_boxes"] - expected["pred_boxes"]).abs().max().item()
    report.add(f"{prefix} max |d pred_boxes|", delta, f"<= {BOX_TOL:g}", delta <= BOX_TOL)
    delta = (ours["pred_logits"] - expected["pred_logits"]).abs().max().item()
    report.add(f"{prefix} max |d pred_logits|", delta, f"<= {LOGIT_TOL:g}", delta <= LOGIT_TOL)
    ours_labels = ours["postprocessed"][0]["labels"][:TOP_LABELS]
    expected_labels = expected["postprocessed"][0]["labels"][:TOP_LABELS]
    same = ours_labels.shape == expected_labels.shape and bool((ours_labels == expected_labels).all())
    report.add(f"{prefix} top-{TOP_LABELS} labels", "same" if same else "differs", "identical", same)


def compare_losses(report: Report, name: str, ours: Dict[str, float], expected: Dict[str, float]):
    for key, value in expected.items():
        if key not in ours:
            report.add(f"{name} {key}", "missing", "present", False)
            continue
        rel = abs(ours[key] - float(value)) / max(abs(float(value)), 1e-12)
        if float(value) == 0.0:
            rel = abs(ours[key])
        report.add(f"{name} {key} rel. error", rel, f"<= {LOSS_REL_TOL:g}", rel <= LOSS_REL_TOL)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--fixture", required=True)
    parser.add_argument("--output", help="save our outputs in the fixture's format")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    fixture = load_fixture(args.fixture)
    model = instantiate(cfg.model).eval()
    FocusDETRCheckpointer(model).load_model_state(fixture["state_dict"])

    backend = select_backend(torch.empty(0))
    print(f"deformable attention backend: {backend} (set FOCUS_DETR_MSDA_BACKEND=pytorch|cpu to choose)")
    report = Report()
    saved = {"single": [], "train_losses": {}}
    expected_single = fixture.get("eval_outputs", {}).get("single", [])
    for i, item in enumerate(fixture["inputs"]):
        ours = run_single(model, item)
        saved["single"].append(
            {k: ours[k] for k in ("pred_logits", "pred_boxes", "postprocessed", "num_selected_tokens_per_layer")}
        )
        if i < len(expected_single):
            compare_single(report, i, ours, expected_single[i])
    for name, entry in fixture.get("train_losses", {}).items():
        ours = run_train_losses(model, fixture["inputs"], entry.get("dn_inputs"))
        saved["train_losses"][name] = ours
        compare_losses(report, f"train[{name}]", ours, entry["losses"])

    if args.output:
        torch.save(saved, args.output)
        print(f"wrote {args.output}")
    report.print()
    print("PARITY OK" if report.ok else "PARITY FAILED")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
