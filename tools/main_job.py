#!/usr/bin/env python
"""The README's first command (``make demo``): train the small Focus-DETR on the embedded tree-crown data on this
CPU, evaluate COCO AP on ``trees_val`` next to a trivial baseline, draw detections, token pictures and the training
curves, and print where everything is.

    python tools/main_job.py                      # ~10 minutes on 2 CPU cores
    python tools/main_job.py --resume             # continue an interrupted run from its last checkpoint
    python tools/main_job.py --output output/mine # a folder of your choice (an earlier run there is refused)
    python tools/main_job.py train.max_iter=1200  # any config override
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import importlib.util
import json
import os
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")
DEFAULT_OUTPUT = os.path.join("output", "main_job")


def _load_script(relative_path, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _count(least):
    """An argparse type: a whole number of at least ``least``, else argparse's one-line error naming the option."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


def parse_args(argv=None):
    from focus_detr.engine.arguments import add_overrides_argument, parse_args_with_overrides

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument(
        "--output", default=None, metavar="DIR",
        help=f"default: {DEFAULT_OUTPUT}, or {DEFAULT_OUTPUT}-2, -3, ... when it holds an earlier run (with --resume: "
        "the newest of them)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    parser.add_argument("--demo-images", type=_count(1), default=2,
                        help="validation images to draw (at least 1; the first ones of the set)")
    parser.add_argument("--threads", type=_count(0), default=0, help="CPU threads (0: all cores)")
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


def _dataset_name(names):
    return names if isinstance(names, str) else names[0]


def default_output(resume, base=DEFAULT_OUTPUT):
    """``base``, or ``base-2``, ``base-3``, ... : without ``resume`` the first that holds no run (so running the job
    again never touches an earlier run's results), with ``resume`` the one before it (the newest run)."""
    candidates = [base] + [f"{base}-{n}" for n in range(2, 10_000)]
    first_free = next(i for i, folder in enumerate(candidates) if not os.path.exists(os.path.join(folder, "last_checkpoint")))
    return candidates[max(first_free - 1, 0)] if resume else candidates[first_free]


def main(args):
    """The whole job holds the output folder (one run at a time in it); without --resume, a folder given with
    --output that holds an earlier run's checkpoints is refused rather than overwritten."""
    from focus_detr.engine import claim_output_dir

    if args.output is None:
        args.output = default_output(args.resume)
        if args.output != DEFAULT_OUTPUT and not args.resume:
            print(f"[main job] {DEFAULT_OUTPUT} holds an earlier run: this one goes to {args.output}", flush=True)
    with claim_output_dir(os.path.abspath(args.output), key="--output", fresh_training=not args.resume):
        return _run_job(args)


def _run_job(args):
    from detectron2.data import DatasetCatalog

    from focus_detr.analysis.baseline import evaluate_grid_baseline
    from focus_detr.analysis.training_curves import plot_training_curves, read_metrics
    from focus_detr.engine import check_datasets_registered, load_config

    torch.set_num_threads(args.threads if args.threads > 0 else (os.cpu_count() or 1))
    output = os.path.abspath(args.output)
    overrides = [f"train.output_dir={output}", *args.opts]
    cfg = load_config(args.config_file, overrides)  # registers the tree data (or names the command that builds it)
    check_datasets_registered(cfg.dataloader)
    train_set = _dataset_name(cfg.dataloader.train.dataset.names)
    val_set = _dataset_name(cfg.dataloader.test.dataset.names)

    train_net = _load_script("train_net.py", "train_net")
    started = time.time()
    train_args = train_net.parse_args(
        ["--config-file", args.config_file] + (["--resume"] if args.resume else []) + overrides
    )
    print(f"[main job] training {args.config_file} for {cfg.train.max_iter} iterations on "
          f"{torch.get_num_threads()} CPU threads -> {output}", flush=True)
    train_net.main(train_args)
    train_minutes = (time.time() - started) / 60

    final_checkpoint = os.path.join(output, "model_final.pth")
    eval_args = train_net.parse_args(
        ["--config-file", args.config_file, "--eval-only", *overrides, f"train.init_checkpoint={final_checkpoint}"]
    )
    model_metrics = train_net.main(eval_args).get("bbox", {})
    baseline_metrics, box_size = evaluate_grid_baseline(train_set, val_set, os.path.join(output, "baseline"))
    baseline_metrics = baseline_metrics.get("bbox", {})

    demo = _load_script(os.path.join("demo", "demo.py"), "focus_detr_demo")
    images = [record["file_name"] for record in DatasetCatalog.get(val_set)[: args.demo_images]]
    pictures_dir = os.path.join(output, "pictures")
    pictures = demo.main(demo.parse_args(
        ["--config-file", args.config_file, "--input", *images, "--output", pictures_dir, "--show-tokens",
         "--opts", *overrides, f"train.init_checkpoint={final_checkpoint}"]
    ))

    curves = plot_training_curves(read_metrics(os.path.join(output, "metrics.json")),
                                  os.path.join(output, "training_curves.png"))

    summary = {
        "config_file": args.config_file,
        "train_minutes": train_minutes,
        "threads": torch.get_num_threads(),
        "val_dataset": val_set,
        "model": {k: model_metrics.get(k) for k in ("AP", "AP50", "AP75")},
        "grid_baseline": {k: baseline_metrics.get(k) for k in ("AP", "AP50", "AP75")},
        "baseline_box_size": box_size,
        "checkpoint": final_checkpoint,
        "pictures": pictures,
        "training_curves": curves,
    }
    with open(os.path.join(output, "main_job_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)

    def fmt(value):
        return "n/a" if value is None else f"{value:.1f}"

    print("\n" + "=" * 78)
    print(f"Focus-DETR main job: {train_minutes:.1f} min of training on {summary['threads']} CPU threads")
    print(f"COCO AP on {val_set}:  model AP {fmt(model_metrics.get('AP'))}  AP50 {fmt(model_metrics.get('AP50'))}   |   "
          f"trivial grid baseline AP {fmt(baseline_metrics.get('AP'))}  AP50 {fmt(baseline_metrics.get('AP50'))}")
    print(f"checkpoint:          {final_checkpoint}")
    print(f"training log:        {os.path.join(output, 'log.txt')}  (metrics: metrics.json, TensorBoard: tensorboard --logdir {output})")
    print(f"evaluation:          {os.path.join(output, 'eval_results.json')}")
    print(f"training curves:     {curves}  (losses, learning rate, AP; again: python tools/plot_metrics.py {output})")
    print(f"pictures:            {pictures_dir}/  ({len(pictures)} PNG files: *_detections, *_foreground, *_tokens)")
    print(f"summary:             {os.path.join(output, 'main_job_summary.json')}")
    print("=" * 78)
    return summary


if __name__ == "__main__":
    sys.path.insert(0, REPO_ROOT)
    from focus_detr.engine.cli import run_reporting_errors

    sys.exit(run_reporting_errors(main, parse_args()))
