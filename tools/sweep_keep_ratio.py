#!/usr/bin/env python
"""Accuracy / efficiency trade-off of one trained Focus-DETR: evaluates the checkpoint at several foreground keep
ratios (no retraining: the ratios are read at run time) and writes a CSV plus a PNG with AP vs GFLOPs and AP vs
latency. A dense point (every keep ratio 1.0, a DINO-like encoder) is added unless ``--no-dense``.

Each row: the foreground keep ratio, the cascade ratios used, COCO AP / AP50 / AP75 on the config's test set, GFLOPs
(mean over the first ``--flop-images`` test images) and the median batch-1 latency on ``--device``.

Example:
    python tools/sweep_keep_ratio.py --config-file configs/focus_detr_r18_trees.py --output output/sweep \
        --keep-ratios 0.2 0.3 0.5 0.7 train.init_checkpoint=output/focus_detr_r18_trees/model_final.pth
"""
import argparse
import csv
import os
import sys

from focus_detr.analysis.flops import count_flops
from focus_detr.analysis.inputs import dataset_inputs
from focus_detr.analysis.keep_ratios import dense_keep_ratios, foreground_selector_of, keep_ratios_applied
from focus_detr.engine import (
    AtomicDetectionCheckpointer,
    build_model,
    check_datasets_registered,
    evaluate,
    inference_amp_dtype,
    load_config,
    resolve_device,
)
from focus_detr.engine.arguments import add_overrides_argument, parse_args_with_overrides
from focus_detr.engine.cli import run_reporting_errors

CSV_COLUMNS = ["setting", "keep_ratio", "cascade_keep_ratios", "AP", "AP50", "AP75", "gflops", "latency_ms"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for sweep.csv, sweep.png")
    parser.add_argument("--keep-ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7, 1.0])
    parser.add_argument("--cascade", type=float, nargs="+", default=None,
                        help="cascade keep ratios for every setting (default: the config's)")
    parser.add_argument("--no-dense", action="store_true", help="do not add the dense (all 1.0) point")
    parser.add_argument("--flop-images", type=int, default=10)
    parser.add_argument("--latency-images", type=int, default=5, help="0 skips latency")
    parser.add_argument("--latency-warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


def _settings(model, args):
    cascade = args.cascade if args.cascade is not None else list(foreground_selector_of(model).cascade_keep_ratios)
    settings = [(f"keep {r:g}", r, cascade) for r in args.keep_ratios]
    if not args.no_dense:
        settings.append(("dense",) + dense_keep_ratios(model))
    return settings


def _latency_ms(model, inputs, device, warmup, amp_dtype):
    from focus_detr.analysis.timing import inference_latency

    return inference_latency(model, inputs, device, warmup, len(inputs), amp_dtype)["median_ms"]


def write_plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_latency = all(row["latency_ms"] != "" for row in rows)
    fig, axes = plt.subplots(1, 2 if with_latency else 1, figsize=(11 if with_latency else 5.5, 4.2), squeeze=False)
    axes = axes[0]
    for axis, x_key, x_label in [(axes[0], "gflops", "GFLOPs")] + ([(axes[1], "latency_ms", "latency (ms, batch 1)")] if with_latency else []):
        ordered = sorted(rows, key=lambda row: row[x_key])
        axis.plot([row[x_key] for row in ordered], [row["AP"] for row in ordered], "o-", color="tab:blue")
        for row in rows:
            axis.annotate(row["setting"], (row[x_key], row["AP"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axis.set_xlabel(x_label)
        axis.set_ylabel("COCO AP")
        axis.grid(alpha=0.3)
    axes[0].set_title("AP vs GFLOPs")
    if with_latency:
        axes[1].set_title("AP vs latency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args):
    cfg = load_config(args.config_file, args.opts)
    if "dataloader" not in cfg:
        raise ValueError(f"{args.config_file} has no dataloader to evaluate on")
    check_datasets_registered(cfg.dataloader)
    os.makedirs(args.output, exist_ok=True)
    cfg.train.output_dir = args.output
    if "evaluator" in cfg.dataloader:
        cfg.dataloader.evaluator.output_dir = args.output
    device = resolve_device(args.device)
    amp_dtype = inference_amp_dtype(cfg, device)  # latency in the precision the evaluation runs in
    model = build_model(cfg, device)
    if cfg.train.init_checkpoint:
        AtomicDetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    else:
        print("warning: train.init_checkpoint is empty: sweeping randomly initialised weights", file=sys.stderr)
    model.eval()
    flop_inputs = dataset_inputs(cfg, args.flop_images)
    latency_inputs = flop_inputs[: args.latency_images] if args.latency_images > 0 else []

    rows = []
    for name, keep_ratio, cascade in _settings(model, args):
        with keep_ratios_applied(model, keep_ratio, cascade):
            metrics = evaluate(cfg, model).get("bbox", {})
            gflops = count_flops(model, flop_inputs).total / 1e9
            latency = ""
            if latency_inputs:
                latency = _latency_ms(model, latency_inputs, device, args.latency_warmup, amp_dtype)
        rows.append(
            {
                "setting": name,
                "keep_ratio": keep_ratio,
                "cascade_keep_ratios": " ".join(f"{r:g}" for r in cascade),
                "AP": metrics.get("AP", float("nan")),
                "AP50": metrics.get("AP50", float("nan")),
                "AP75": metrics.get("AP75", float("nan")),
                "gflops": gflops,
                "latency_ms": latency,
            }
        )
        print(f"{name:>10}: AP {rows[-1]['AP']:.2f}  AP50 {rows[-1]['AP50']:.2f}  GFLOPs {gflops:.3f}"
              + (f"  latency {latency:.1f} ms" if latency != "" else ""))

    csv_path = os.path.join(args.output, "sweep.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    png_path = os.path.join(args.output, "sweep.png")
    write_plot(rows, png_path)
    print(f"wrote {csv_path}\nwrote {png_path}")
    return rows


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, parse_args()))
