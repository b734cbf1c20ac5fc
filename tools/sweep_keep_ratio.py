#!/usr/bin/env python
"""Accuracy / efficiency trade-off of one trained Focus-DETR: evaluates the checkpoint at several foreground keep
ratios (no retraining: the ratios are read at run time) and writes a CSV plus a PNG with AP vs GFLOPs and AP vs
latency. A dense point (every keep ratio 1.0, a DINO-like encoder) is added unless ``--no-dense``.

Each row, in keep-ratio order: the foreground keep ratio, the cascade ratios used, COCO AP / AP50 / AP75 on the
config's test set, GFLOPs (mean over the first ``--flop-images`` test images) and the median batch-1 latency on
``--device`` over ``--latency-repeats`` (>= 5) rounds; each round runs every setting once in turn on the same test
image (cycling through the first ``--latency-images``), so a busy spell of the machine slows all settings alike. With
the dense point, each setting's time is also given as the median of its per-round ratios to the dense time.

Writes into --output: sweep.csv, sweep.png, and each setting's detections (the evaluator's files) in a folder of its
own (keep_0.3/, dense/, ...). The folder is locked while the sweep runs (a second sweep or a training into it is
refused), and an --output holding a training run (last_checkpoint) or an earlier sweep (sweep.csv) is refused. So is
a config without an evaluator (dataloader.evaluator=null): the sweep is AP against cost.

Example:
    python tools/sweep_keep_ratio.py --config-file configs/focus_detr_r18_trees.py --output output/sweep \
        --keep-ratios 0.1 0.2 0.3 0.5 0.7 --latency-repeats 15 --threads 1 \
        train.init_checkpoint=output/main_job/model_final.pth
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import os
import sys

import torch

from focus_detr.analysis.inputs import dataset_inputs
from focus_detr.analysis.keep_ratio_sweep import (
    MIN_LATENCY_REPEATS,
    is_setting_folder,
    sweep_keep_ratios,
    write_sweep_csv,
    write_sweep_plot,
)
from focus_detr.analysis.keep_ratios import keep_ratio_settings
from focus_detr.engine import (
    build_model,
    check_datasets_registered,
    claim_output_dir,
    inference_amp_dtype,
    load_config,
    resolve_device,
)
from focus_detr.engine.arguments import add_overrides_argument, parse_args_with_overrides
from focus_detr.engine.cli import run_reporting_errors
from focus_detr.engine.checkpoint_classes import check_test_set_classes
from focus_detr.engine.inference_weights import read_inference_weights
from focus_detr.engine.test_set import check_evaluator_settings


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for sweep.csv, sweep.png")
    parser.add_argument("--keep-ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7, 1.0])
    parser.add_argument("--cascade", type=float, nargs="+", default=None,
                        help="cascade keep ratios for every setting (default: the config's)")
    parser.add_argument("--no-dense", action="store_true", help="do not add the dense (all 1.0) point")
    parser.add_argument("--flop-images", type=int, default=10)
    parser.add_argument("--latency-images", type=int, default=5, help="test images the latency rounds cycle "
                        "through; 0 skips latency")
    parser.add_argument("--latency-repeats", type=int, default=MIN_LATENCY_REPEATS,
                        help=f"interleaved rounds per setting (>= {MIN_LATENCY_REPEATS}; the latency is their median)")
    parser.add_argument("--latency-warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0: torch's default); 1 times steadiest on a machine other work shares")
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


def main(args):
    if args.latency_images > 0 and args.latency_repeats < MIN_LATENCY_REPEATS:
        raise ValueError(f"--latency-repeats must be at least {MIN_LATENCY_REPEATS} (its median is the latency), "
                         f"got {args.latency_repeats}")
    if args.latency_warmup < 0 or args.latency_images < 0 or args.threads < 0:
        raise ValueError("--latency-warmup, --latency-images and --threads must be >= 0")
    if args.flop_images < 1:
        raise ValueError(f"--flop-images must be at least 1, got {args.flop_images}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, args.opts)
    if "dataloader" not in cfg:
        raise ValueError(f"{args.config_file} has no dataloader to evaluate on")
    check_datasets_registered(cfg.dataloader)
    # AP against cost is the sweep: without an evaluator every row's AP was NaN, found after all the settings ran
    check_evaluator_settings(cfg, required_by="the sweep (AP against GFLOPs and latency)")
    # the lock train_net.py takes on its output folder: a second sweep, or a training, into --output is refused
    with claim_output_dir(args.output, key="--output"):
        _check_output_holds_no_results(args.output)
        return _sweep(args, cfg)


def _check_output_holds_no_results(folder):
    """Refuses a folder whose results the sweep would overwrite or mix its own with: a training run's (its evaluation
    files, its checkpoints) or an earlier sweep's (rows of another checkpoint or other settings)."""
    if os.path.isfile(os.path.join(folder, "last_checkpoint")):
        raise ValueError(f"--output {folder} holds a training run (last_checkpoint): the sweep would write its files "
                         "among that run's; choose another --output")
    if os.path.exists(os.path.join(folder, "sweep.csv")):
        raise ValueError(f"--output {folder} already holds a sweep (sweep.csv): choose another --output, or delete "
                         "that folder to sweep into it again")
    # an interrupted sweep's settings, without their sweep.csv: the new one would list only some of the folders
    earlier = sorted(name for name in os.listdir(folder)
                     if os.path.isdir(os.path.join(folder, name)) and is_setting_folder(name))
    if earlier:
        raise ValueError(f"--output {folder} holds the results of an earlier sweep that did not finish "
                         f"({', '.join(earlier)}): choose another --output, or delete that folder to sweep into it "
                         "again")


def _sweep(args, cfg):
    """The sweep itself, in the claimed --output; returns its rows."""
    cfg.train.output_dir = args.output
    device = resolve_device(args.device, "--device", "--device cpu")
    amp_dtype = inference_amp_dtype(cfg, device)  # latency in the precision the evaluation runs in
    model = build_model(cfg, device)
    if cfg.train.init_checkpoint:
        # EMA weights where evaluation uses them; the AP of each ratio scores the outputs as the test set's classes
        trained = read_inference_weights(model, cfg, cfg.train.init_checkpoint).thing_classes
        check_test_set_classes(cfg, trained, cfg.train.init_checkpoint, "the sweep would score the model's classes")
    else:
        print("warning: train.init_checkpoint is empty: sweeping randomly initialised weights", file=sys.stderr)
    model.eval()
    settings = keep_ratio_settings(model, args.keep_ratios, args.cascade, dense=not args.no_dense)
    # loaded once for both; each option counts its own images (latency is not capped at --flop-images)
    images = dataset_inputs(cfg, max(args.flop_images, args.latency_images))
    flop_inputs, latency_inputs = images[: args.flop_images], images[: args.latency_images]

    rows = sweep_keep_ratios(cfg, model, settings, flop_inputs, latency_inputs, device, args.latency_warmup,
                             args.latency_repeats, amp_dtype, output_dir=args.output)
    latency = (f"latency ms, x dense (medians of {args.latency_repeats} interleaved rounds)" if latency_inputs else "")
    print(f"{'setting':>10}  {'cascade':<14}{'AP':>7}{'AP50':>7}{'GFLOPs':>9}  {latency}")
    for row in rows:
        cells = ""
        if latency_inputs:
            ratio = f"{row['latency_vs_dense']:.2f}x" if row["latency_vs_dense"] != "" else ""
            cells = f"{row['latency_ms']:>8.1f}  {ratio}"
        print(f"{row['setting']:>10}  {row['cascade_keep_ratios']:<14}{row['AP']:>7.2f}{row['AP50']:>7.2f}"
              f"{row['gflops']:>9.3f}  {cells}")

    csv_path = os.path.join(args.output, "sweep.csv")
    write_sweep_csv(rows, csv_path)
    png_path = os.path.join(args.output, "sweep.png")
    threads = torch.get_num_threads()
    where = f"{device}, {threads} thread{'s' if threads > 1 else ''}" if torch.device(device).type == "cpu" else device
    write_sweep_plot(rows, png_path, title=f"{os.path.basename(args.config_file)}: keep-ratio sweep on {where}")
    print(f"wrote {csv_path}\nwrote {png_path}")
    return rows


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, parse_args()))
