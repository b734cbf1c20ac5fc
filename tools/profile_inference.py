#!/usr/bin/env python
"""Where one inference's time goes: on a GPU, the fraction of the wall time the device is busy, kernels and kernel
launches, host<->device copies and host synchronisations per image, the operators dispatched and casts, and the
longest kernels; per precision (float32, and autocast bfloat16 / float16), and with ``--cuda-graphs`` also replayed
from CUDA graphs (``focus_detr.engine.cuda_graphs``). Random weights, batch 1, one synthetic
image (``focus_detr.analysis.gpu_profile``). On a CPU only the operator counts and wall times mean anything.

    python tools/profile_inference.py --config-file configs/focus_detr_r50_4scale_12ep.py --device cuda \\
        --precision float32 bfloat16 --json profile.json
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import sys

import torch

from focus_detr.analysis.gpu_profile import profile_summary
from focus_detr.analysis.inputs import synthetic_inputs
from focus_detr.analysis.timing import inference_call
from focus_detr.engine import build_model, load_config, resolve_amp_dtype, resolve_device, write_json
from focus_detr.engine.arguments import add_overrides_argument, parse_args_with_overrides
from focus_detr.engine.cli import run_reporting_errors
from focus_detr.engine.cuda_graphs import CUDAGraphInference, graphs_available
from focus_detr.engine.settings import check_output_file

PRECISIONS = ("float32", "bfloat16", "float16")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if visible)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["float32"],
                        help="float32, or autocast to bfloat16 / float16 (the model's weights stay float32)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=[800, 1333])
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also profile each precision replayed from CUDA graphs (rows '<precision>+graphs')")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10, help="unprofiled timed calls (the wall time)")
    parser.add_argument("--profiled", type=int, default=5, help="calls under the profiler (the counts)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default, all cores)")
    parser.add_argument("--json", metavar="PATH")
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


def _row(precision, s, on_gpu):
    """One table row; the GPU's columns are "-" on the CPU, where the profiler records no kernel."""
    busy = "-" if s["busy_fraction"] is None else f"{100 * s['busy_fraction']:.0f}%"
    copies = s["copies"].get("HtoD", 0) + s["copies"].get("DtoH", 0)
    gpu = [f"{s['device_active_ms']:.1f}", busy, f"{s['kernels']:.0f}", f"{s['launches']:.0f}", f"{copies:.0f}",
           f"{s['syncs']:.0f}"] if on_gpu else ["-"] * 6
    cells = "".join(cell.rjust(width) for cell, width in zip(gpu, (11, 7, 9, 10, 8, 7)))
    return f"{precision:<16}{s['wall_ms']:>9.1f}{cells}{s['operators']:>8.0f}{s['casts']:>7.0f}"


def main(args):
    if len(set(args.precision)) < len(args.precision):  # one row each: a repeat was profiled once
        raise ValueError(f"--precision names a precision twice: {' '.join(args.precision)}")
    if args.profiled < 1 or args.repeats < 1 or args.warmup < 0 or args.threads < 0:
        raise ValueError("--profiled and --repeats must be at least 1, --warmup and --threads at least 0")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, args.opts)
    if args.json:  # before the profiling, not after it
        check_output_file(args.json, "--json", "profile.json", inputs={"--config-file": args.config_file})
    device = resolve_device(args.device, "--device", "--device cpu")
    if args.cuda_graphs and not graphs_available(device):
        raise ValueError(f"--cuda-graphs needs a CUDA device, got --device {device}")
    model = build_model(cfg, device)
    runs = {"": model}
    if args.cuda_graphs:
        runs["+graphs"] = CUDAGraphInference(model)
    height, width = args.input_size
    inputs = synthetic_inputs(height, width)
    results = {
        "config_file": args.config_file, "device": device, "input_size": [height, width], "torch": torch.__version__,
        "hardware": (torch.cuda.get_device_name(device) if torch.device(device).type == "cuda"
                     else f"CPU, {torch.get_num_threads()} threads"),
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "precisions": {},
    }
    for precision in args.precision:
        amp_dtype = None if precision == "float32" else resolve_amp_dtype(precision, device, "--precision")
        for suffix, run in runs.items():
            call = inference_call(run, inputs, device, amp_dtype)
            results["precisions"][precision + suffix] = profile_summary(
                call, device, args.warmup, args.repeats, args.profiled
            )

    print(f"{args.config_file} on {results['hardware']} ({device}), {height}x{width}, batch 1, per image:")
    print(f"{'precision':<16}{'wall ms':>9}{'device ms':>11}{'busy':>7}{'kernels':>9}{'launches':>10}"
          f"{'H<->D':>8}{'syncs':>7}{'ops':>8}{'casts':>7}")
    on_gpu = torch.device(device).type == "cuda"
    for precision, summary in results["precisions"].items():
        print(_row(precision, summary, on_gpu))
    print("ops: the profiler's operator events, nested calls included (tools/benchmark.py --count-dispatch counts "
          "each dispatched operator once)")
    for precision, summary in results["precisions"].items():
        if summary["top_kernels"]:
            print(f"longest kernels ({precision}, ms per image): " + "; ".join(
                f"{k['name'][:60]} {k['ms']:.2f} ({k['launches']:.0f}x)" for k in summary["top_kernels"][:5]))
    if args.json:
        write_json(args.json, results, indent=1)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, parse_args()))
