#!/usr/bin/env python
"""Counts FLOPs, parameters and activations of a config's model, or prints its structure (detectron2 style).

FLOPs follow the DETR convention: the model in eval mode on the first ``--num-inputs`` test images of the config's
dataset (batch 1, the test resize), averaged; or on one synthetic image with ``--input-size H W`` (no resize).
Focus-DETR's encoder is counted by the tokens it actually keeps; the same model with every keep ratio at 1.0 (a dense,
DINO-like encoder) is counted next to it. One multiply-add counts as one flop (fvcore / detrex convention).
No weights are loaded (``train.init_checkpoint`` is ignored): none of the counts depends on their values.

Examples:
    python tools/analyze_model.py --config-file configs/focus_detr_r50_4scale_12ep.py --tasks flop --input-size 800 1333
    python tools/analyze_model.py --config-file configs/focus_detr_r18_trees.py --tasks flop parameter -n 9 --json flops.json
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import logging
import sys

import numpy as np

from focus_detr.analysis.activations import count_activations
from focus_detr.analysis.flops import count_flops
from focus_detr.analysis.inputs import dataset_inputs, synthetic_inputs
from focus_detr.analysis.keep_ratios import dense_keep_ratios, foreground_selector_of, keep_ratios_applied
from focus_detr.engine import build_model, check_datasets_registered, load_config, write_json
from focus_detr.engine.arguments import add_overrides_argument, parse_args_with_overrides
from focus_detr.engine.cli import run_reporting_errors
from focus_detr.engine.settings import check_output_file

TASKS = ("flop", "parameter", "activation", "structure")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=["flop"])
    parser.add_argument("-n", "--num-inputs", type=int, default=None,
                        help="dataset images to average over (default 100); not with --input-size")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="one synthetic image of this size")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense (all keep ratios 1.0) comparison")
    add_overrides_argument(parser)
    args = parse_args_with_overrides(parser, argv)
    if args.num_inputs is not None and args.input_size:  # the synthetic image alone was counted, without a word
        parser.error("give --num-inputs (dataset images) or --input-size (one synthetic image), not both")
    if args.num_inputs is None:
        args.num_inputs = 100
    if args.num_inputs <= 0:
        parser.error(f"--num-inputs must be positive, got {args.num_inputs}")
    return args


def _inputs(cfg, args):
    if args.input_size:
        return synthetic_inputs(*args.input_size), f"one synthetic {args.input_size[0]}x{args.input_size[1]} image"
    if "dataloader" not in cfg:
        raise ValueError(f"{args.config_file} has no dataloader: pass --input-size H W for a synthetic image")
    check_datasets_registered(cfg.dataloader.test)
    inputs = dataset_inputs(cfg, args.num_inputs)
    names = cfg.dataloader.test.dataset.names
    return inputs, f"first {len(inputs)} images of {names} (test resize)"


def _is_focus_detr(model):
    try:
        foreground_selector_of(model)
        return True
    except ValueError:
        return False


def flop_task(model, inputs, with_dense):
    report = count_flops(model, inputs)
    result = {
        "total_gflops": report.total / 1e9,
        "per_module": {row: value / 1e9 for row, value in report.per_module.items()},
        "per_operator": {op: value / 1e9 for op, value in report.per_operator.items()},
        "unsupported_ops": report.unsupported_ops,
        "num_inputs": report.num_inputs,
    }
    if _is_focus_detr(model):
        selector = foreground_selector_of(model)
        result["keep_ratio"] = float(selector.keep_ratio)
        result["cascade_keep_ratios"] = [float(r) for r in selector.cascade_keep_ratios]
        if with_dense:
            with keep_ratios_applied(model, *dense_keep_ratios(model)):
                dense = count_flops(model, inputs)
            result["dense_total_gflops"] = dense.total / 1e9
            result["dense_per_module"] = {row: value / 1e9 for row, value in dense.per_module.items()}
    return result


def format_flop_table(result):
    dense = result.get("dense_per_module")
    header = f"{'module':<22}{'GFLOPs':>10}" + (f"{'dense GFLOPs':>15}" if dense else "")
    lines = [header, "-" * len(header)]
    for row, value in result["per_module"].items():
        lines.append(f"{row:<22}{value:>10.3f}" + (f"{dense[row]:>15.3f}" if dense else ""))
    lines.append("-" * len(header))
    lines.append(f"{'total':<22}{result['total_gflops']:>10.3f}" + (f"{result['dense_total_gflops']:>15.3f}" if dense else ""))
    if "keep_ratio" in result:
        lines.append(f"keep ratio {result['keep_ratio']}, cascade {result['cascade_keep_ratios']}"
                     + ("; dense = all keep ratios 1.0" if dense else ""))
    if dense and result["dense_total_gflops"] > 0:
        lines.append(f"Focus-DETR / dense: {result['total_gflops'] / result['dense_total_gflops']:.3f}")
    unsupported = result["unsupported_ops"]
    lines.append("unsupported ops: " + (", ".join(f"{op} x{n}" for op, n in sorted(unsupported.items())) or "none"))
    return "\n".join(lines)


def parameter_task(model):
    from detectron2.utils.analysis import parameter_count, parameter_count_table

    counts = parameter_count(model)
    unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return {"total": int(unique), "per_module": {k: int(v) for k, v in counts.items() if k and k.count(".") == 0}}, parameter_count_table(model, max_depth=2)


def activation_task(model, inputs):
    # detectron2's helper offers no switch for fvcore's per-op warnings: count_activations returns what they say
    logging.getLogger("fvcore.nn.jit_analysis").setLevel(logging.ERROR)
    totals, uncounted = count_activations(model, inputs)
    return {"mean_mactivations": float(np.mean(totals)), "std_mactivations": float(np.std(totals)),
            "uncounted_ops": {op: round(n / len(inputs)) for op, n in sorted(uncounted.items())}}  # per image


def main(args):
    logging.basicConfig(level=logging.WARNING)
    if args.json:  # before the counting, which takes minutes on a real test set
        check_output_file(args.json, "--json", "report.json", inputs={"--config-file": args.config_file})
    cfg = load_config(args.config_file, args.opts)
    # no train.init_checkpoint: FLOPs, parameter and activation counts and the structure do not depend on the
    # weights' values (the kept token counts are set by the keep ratios), so nothing is read or downloaded
    model = build_model(cfg).eval()
    results = {"config_file": args.config_file}
    needs_inputs = {"flop", "activation"} & set(args.tasks)
    inputs, described = _inputs(cfg, args) if needs_inputs else (None, None)
    if described:
        results["inputs"] = described
        print(f"Inputs: {described}")
    if "flop" in args.tasks:
        results["flop"] = flop_task(model, inputs, with_dense=not args.no_dense)
        print(format_flop_table(results["flop"]))
    if "parameter" in args.tasks:
        results["parameter"], table = parameter_task(model)
        print(table)
        print(f"unique parameters: {results['parameter']['total']:,}")
    if "activation" in args.tasks:
        results["activation"] = activation_task(model, inputs)
        activation = results["activation"]
        print(f"activations (M): {activation['mean_mactivations']:.3f} ± {activation['std_mactivations']:.3f} "
              "(outputs of convolutions, linear layers, matrix products and attention)")
        print("not counted: " + (", ".join(f"{op} x{n}" for op, n in activation["uncounted_ops"].items()) or "none"))
    if "structure" in args.tasks:
        print(model)
    if args.json:
        # the flat keys of the JSON format, plus everything else under its task
        flat = {}
        if "flop" in results:
            flop = results["flop"]
            flat = {k: flop[k] for k in ("total_gflops", "per_module", "unsupported_ops") if k in flop}
            if "dense_total_gflops" in flop:
                flat["dense_total_gflops"] = flop["dense_total_gflops"]
        write_json(args.json, {**flat, **results})
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, parse_args()))
