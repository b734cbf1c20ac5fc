#!/usr/bin/env python
"""Checks a configuration against official Focus-DETR outputs stored in a parity fixture.

    python tools/check_parity.py --fixture ../shared/fixtures/focus_detr_tiny.pt \
        [--config-file CONFIG] [--output ours.pt] [key=value ...]

Loads ``fixture["state_dict"]`` (official layout) through the checkpoint loader, runs eval-mode inference on each
fixture input alone, and the training losses (``no_dn`` as is; ``dn`` with the fixture's recorded denoising queries
injected). Prints a comparison table and exits non-zero when out of tolerance. A fixture without the official outputs
of each input or without both training runs is refused: a check of part of it is no parity check. Without
``--config-file``, the configuration is the first of ``CANDIDATE_CONFIGS`` whose model the weights fit exactly; when
the weights do not fit the given one (reported), the repository's config closest to it that they fit.

Ranking decisions are teacher-forced (``focus_detr.analysis.forced_decisions``): at each ranking step the
official choice recorded in the fixture is first checked against our scores (it must be our choice up to near-ties)
and then taken, so that the outputs can be compared at tight tolerances. ``--output`` saves these forced outputs.

``--amp bfloat16`` (or ``float16``) runs our model under autocast and reports its deviation instead of checking
parity: the official decisions are taken even where our reduced-precision scores rank them otherwise (so the
arithmetic is compared query by query), and each image also runs on its own decisions; both report how many of the
official top detections have a same-label detection of ours within ``AMP_BOX_TOL`` of the image size. It never
prints PARITY OK: the float32 tolerances do not apply.
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from detectron2.config import instantiate
from omegaconf.errors import OmegaConfBaseException

from focus_detr.analysis.forced_decisions import ForcedDecisions, single_decisions
from focus_detr.analysis.parity import (
    AMP_BOX_TOL,
    TOP_DETECTIONS,
    TRAIN_SEED,
    Report,
    compare_losses,
    compare_single,
    load_fixture,
    match_detections,
    model_setting_differences,
    random_in_training,
    run_single,
    run_train_losses,
    weight_mismatch,
)
from focus_detr.checkpoint import FocusDETRCheckpointer
from focus_detr.engine import (
    ConfigError,
    amp_autocast,
    atomic_write,
    load_config,
    resolve_amp_dtype,
    resolve_device,
)
from focus_detr.engine.arguments import add_overrides_argument, parse_args_with_overrides
from focus_detr.engine.cli import run_reporting_errors
from focus_detr.engine.settings import check_output_file
from focus_detr.layers.ms_deform_attn_backends import select_backend

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


def _candidates(config_file: Optional[str], opts: List[str]) -> List[str]:
    """The configs to try: without ``config_file``, ``CANDIDATE_CONFIGS`` in order; with it, that config, then every
    config of the repository, closest first (fewest differing model settings). Weights of another shape than the
    given config's (e.g. an R50 made with an "R101" config that keeps R50's depth) are then checked with a config that
    keeps the given one's other settings, such as the 36-epoch position embedding."""
    if not config_file:
        return [str(REPO_ROOT / c) for c in CANDIDATE_CONFIGS]
    requested = Path(config_file).resolve()
    others = sorted({str(p) for p in (REPO_ROOT / "configs").glob("*.py")} | {str(REPO_ROOT / CANDIDATE_CONFIGS[0])})
    others = [c for c in others if Path(c).resolve() != requested]
    try:
        wanted = load_config(config_file, opts)
    except ConfigError:
        return [config_file] + others  # build_model reports it
    distance = {}
    for candidate in others:
        try:
            distance[candidate] = model_setting_differences(wanted, load_config(candidate, opts))
        except (ConfigError, OmegaConfBaseException):
            continue  # e.g. an override of a ResNet setting, for a Swin candidate: not the config of these weights
    return [config_file] + sorted(distance, key=lambda c: (distance[c], c))


def build_model(config_file: Optional[str], opts: List[str], state_dict: Dict[str, torch.Tensor]):
    """The model of ``config_file`` if the weights fit it, else of the closest candidate configuration they fit
    (:func:`_candidates`; the weights fix the architecture, and a config that cannot hold them is reported, not
    fatal). Returns the model and the config used. The overrides are checked against the first config tried (one
    line for an unknown key); a later candidate they do not apply to is skipped."""
    with_overrides = f" with the overrides {' '.join(opts)}" if opts else ""
    for index, candidate in enumerate(_candidates(config_file, opts)):
        try:
            cfg = load_config(candidate, opts)
        except ConfigError:
            if index == 0:
                raise
            continue
        model = instantiate(cfg.model)
        mismatch = weight_mismatch(model, state_dict)
        if mismatch is None:
            print(f"config: {candidate}")
            return model, candidate
        if candidate == config_file:
            print(f"WARNING: the fixture's weights do not fit {config_file}{with_overrides} ({mismatch}); trying the "
                  "configs closest to it")
    # The overrides apply to every candidate: one that changes a shape makes the weights fit none of them.
    cause = (": an override may change the model's shapes (try without them), or pass the --config-file the "
             "weights were made with") if opts else "; pass the --config-file they were made with"
    tried = "the configs of the repository" if config_file else ", ".join(CANDIDATE_CONFIGS)
    raise ValueError(f"the fixture's weights fit none of the candidate configurations ({tried}){with_overrides}"
                     + cause)


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
    args.device = resolve_device(args.device, "--device", "--device cpu")

    if args.output:  # before the runs, not after them
        check_output_file(args.output, "--output", "ours.pt", inputs={"--fixture": args.fixture})

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
    unchecked = amp_dtype is not None
    # load_fixture made sure that every input has its official outputs and that both training runs are there.
    for i, (item, expected) in enumerate(zip(fixture["inputs"], fixture["eval_outputs"]["single"])):
        prefix = f"image{i} "
        with amp_autocast(args.device, amp_dtype):
            with ForcedDecisions(model, report, prefix, **single_decisions(expected), take_unchecked=unchecked):
                ours = run_single(model, item)
            own_decisions = run_single(model, item) if unchecked else None
        saved["single"].append(ours)
        compare_single(report, prefix, ours, expected, item)
        if own_decisions is not None:
            box_tol_px = AMP_BOX_TOL * max(item["height"], item["width"])
            for decisions, outputs in (("official", ours), ("own", own_decisions)):
                matched, total = match_detections(
                    outputs["postprocessed"][0], expected["postprocessed"][0], box_tol_px, score_tol=None
                )
                report.add(f"{prefix}{decisions} decisions: top-{TOP_DETECTIONS} same label, box within "
                           f"{AMP_BOX_TOL:g}", f"{matched}/{total}", "(reported)", matched == total)
    for name, entry in fixture["train_losses"].items():
        debug = entry.get("debug", {})
        decisions = {"foreground_inds": debug.get("foreground_inds"), "query_boxes": debug.get("enc_reference")}
        with amp_autocast(args.device, amp_dtype):
            with ForcedDecisions(model, report, f"train[{name}] ", **decisions, take_unchecked=unchecked):
                ours = run_train_losses(model, fixture["inputs"], entry.get("dn_inputs"),
                                        entry.get("seed", TRAIN_SEED))
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
    verdict = "PARITY OK" if report.ok else "PARITY FAILED" + ("" if report.rows else ": nothing was compared")
    if args.config_file not in (None, config_file):
        verdict += f" (with {config_file}: the weights do not fit {args.config_file})"
    if report.ok and not fixture["train_losses"]:
        verdict += " (inference only: the fixture holds no training losses)"
    random_parts = random_in_training(model)
    if any(not ok and name.startswith("train[") for name, _, _, ok in report.rows) and random_parts:
        # e.g. Swin's drop_path_rate: inference agrees, and the training rows differ by the random draws alone
        seeds = sorted({entry.get("seed", TRAIN_SEED) for entry in fixture["train_losses"].values()})
        verdict += (f" (the model draws random numbers in training: {', '.join(random_parts)}; its training losses "
                    "compare only when the fixture's runs were made right after torch.manual_seed("
                    f"{', '.join(map(str, seeds))}), the seed this check used, or with that randomness off on both "
                    "sides, e.g. model.backbone.drop_path_rate=0.0)")
    print(verdict)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
