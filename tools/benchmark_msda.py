#!/usr/bin/env python
"""Benchmark multi-scale deformable attention backends (forward, forward+backward, GPU peak memory).

Shapes: the R50 encoder at 800x1333 (levels (100,167), (50,84), (25,42), (13,21): 22223 value tokens, 8 heads x 32
channels, 4 points) with three query sets: every token (dense encoder), the Focus-DETR kept fraction of tokens
(--keep-fraction, default 0.3), and 900 decoder queries; batch sizes from --batch. Sampling locations imitate the
model: encoder queries sample around their own position (pixel-scale offsets), decoder queries inside random boxes.

The backends of one case run in turn in every timed round (the first one rotating), so that a change of the
machine's load reaches all of them; each prints its median time and the median over rounds of its speed-up against
the pytorch reference (1.0x), one table per dtype; --json writes the rows too.

    python tools/benchmark_msda.py --threads 2
    python tools/benchmark_msda.py --device cuda --dtype float32 float16 bfloat16 --json msda.json
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import json
import statistics
import sys

import torch

from focus_detr.analysis.timing import median_ratio, synchronize, time_interleaved
from focus_detr.engine import atomic_write, resolve_device
from focus_detr.engine.cli import run_reporting_errors
from focus_detr.engine.settings import check_output_file
from focus_detr.layers.ms_deform_attn_backends import BACKENDS, available_backends
from focus_detr.layers.ms_deform_attn_op import multi_scale_deformable_attention

R50_SPATIAL_SHAPES = ((100, 167), (50, 84), (25, 42), (13, 21))
DTYPES = ("float32", "float16", "bfloat16", "float64")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--dtype", nargs="+", default=None, choices=DTYPES,
                        help="dtypes to run (default: float32 on cpu; float32 float16 bfloat16 on cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", default=None, help="default: every backend available on --device")
    parser.add_argument("--cases", nargs="+", default=["encoder", "focus", "decoder"],
                        choices=["encoder", "focus", "decoder"])
    parser.add_argument("--keep-fraction", type=float, default=0.3, help="Focus-DETR kept token fraction")
    parser.add_argument("--decoder-queries", type=int, default=900)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-backward", action="store_true", help="time the forward only")
    parser.add_argument("--json", default=None, help="write the result rows to this file ('-' = stdout)")
    return parser.parse_args(argv)


def check_arguments(args):
    """ValueError (one line) for a setting that cannot be timed, before anything runs: a size that is not positive,
    a keep fraction outside (0, 1] (5 timed the dense encoder as the Focus-DETR case), an unknown backend, an unusable
    --json path."""
    threads = 1 if args.threads is None else args.threads
    for flag, values, least in (("--batch", args.batch, 1), ("--decoder-queries", [args.decoder_queries], 1),
                                ("--heads", [args.heads], 1), ("--head-dim", [args.head_dim], 1),
                                ("--points", [args.points], 1), ("--repeats", [args.repeats], 1),
                                ("--warmup", [args.warmup], 0), ("--threads", [threads], 1)):
        for value in values:
            if value < least:
                raise ValueError(f"{flag} must be at least {least}, got {value}")
    if not 0.0 < args.keep_fraction <= 1.0:
        raise ValueError(f"--keep-fraction is the share of tokens the Focus-DETR case keeps, in (0, 1], got "
                         f"{args.keep_fraction}")
    unknown = sorted(set(args.backends or ()) - set(BACKENDS))
    if unknown:
        raise ValueError(f"--backends: unknown {', '.join(unknown)}; the backends are {', '.join(BACKENDS)}")
    if args.json and args.json != "-":
        check_output_file(args.json, "--json", "msda.json")


def level_layout(device):
    spatial_shapes = torch.tensor(R50_SPATIAL_SHAPES, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return spatial_shapes.to(device), level_start_index.to(device), int(sizes.sum())


def token_centres():
    """(S, 2) normalised (x, y) centre of every token of every level."""
    centres = []
    for height, width in R50_SPATIAL_SHAPES:
        ys, xs = torch.meshgrid(
            (torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width, indexing="ij"
        )
        centres.append(torch.stack([xs.flatten(), ys.flatten()], -1))
    return torch.cat(centres)


def make_case(case, batch, args, dtype, device, generator):
    """Inputs of one benchmark case, on ``device``; locations/weights in float32 for reduced-precision values."""
    spatial_shapes, level_start_index, num_values = level_layout(device)
    heads, levels, points = args.heads, len(R50_SPATIAL_SHAPES), args.points
    coord_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    normalizer = spatial_shapes.flip(-1).to(torch.float64).cpu()  # (L, 2) = (w, h)
    if case in ("encoder", "focus"):
        centres = token_centres()
        if case == "focus":
            keep = max(1, int(args.keep_fraction * num_values))
            index = torch.stack([torch.randperm(num_values, generator=generator)[:keep] for _ in range(batch)])
        else:
            index = torch.arange(num_values).expand(batch, num_values)
        refs = centres[index]  # (B, Q, 2)
        offsets = torch.randn(batch, refs.shape[1], heads, levels, points, 2, generator=generator,
                              dtype=torch.float64) * 2.0
        locations = refs[:, :, None, None, None, :] + offsets / normalizer[None, None, None, :, None, :]
    else:
        queries = args.decoder_queries
        boxes = torch.cat([torch.rand(batch, queries, 2, generator=generator, dtype=torch.float64),
                           0.05 + 0.45 * torch.rand(batch, queries, 2, generator=generator, dtype=torch.float64)], -1)
        offsets = torch.randn(batch, queries, heads, levels, points, 2, generator=generator, dtype=torch.float64)
        locations = boxes[:, :, None, None, None, :2] + offsets / points * boxes[:, :, None, None, None, 2:] * 0.5
    queries = locations.shape[1]
    weights = torch.rand(batch, queries, heads, levels * points, generator=generator, dtype=torch.float64)
    weights = weights.softmax(-1).view(batch, queries, heads, levels, points)
    value = torch.randn(batch, num_values, heads, args.head_dim, generator=generator, dtype=torch.float64)
    return (
        value.to(device=device, dtype=dtype),
        spatial_shapes,
        level_start_index,
        locations.to(device=device, dtype=coord_dtype).contiguous(),
        weights.to(device=device, dtype=coord_dtype).contiguous(),
    )


def peak_memory_mb(fn, device):
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20


def backend_calls(backend, inputs):
    """The forward (no gradient) and forward+backward calls of ``backend`` on ``inputs``."""
    value, spatial_shapes, level_start_index, locations, weights = inputs

    def forward():
        with torch.no_grad():
            return multi_scale_deformable_attention(value, spatial_shapes, level_start_index, locations, weights,
                                                    backend=backend)

    leaves = [t.detach().clone().requires_grad_(True) for t in (value, locations, weights)]
    grad_output = None

    def forward_backward():
        nonlocal grad_output
        for leaf in leaves:
            leaf.grad = None
        out = multi_scale_deformable_attention(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2],
                                               backend=backend)
        if grad_output is None:
            grad_output = torch.randn_like(out)
        out.backward(grad_output)

    return forward, forward_backward


def measure_case(backends, inputs, args, device, what):
    """backend -> its row (times in ms, speed-ups against "pytorch", GPU peak memory) for one case; a backend that
    cannot run it (e.g. this dtype) is left out with a line on stderr naming ``what``."""
    calls = {}
    for backend in backends:
        forward, forward_backward = backend_calls(backend, inputs)
        try:  # once each, before any timing: what cannot run is known before the rounds
            forward()
            if not args.no_backward:
                forward_backward()
            synchronize(device)  # a CUDA error surfaces here, not in the timed rounds
        except RuntimeError as error:
            print(f"  skip {backend} {what}: {error}", file=sys.stderr)
            continue
        calls[backend] = (forward, forward_backward)
    rows = {backend: {} for backend in calls}
    passes = [("forward", 0)] + ([] if args.no_backward else [("forward_backward", 1)])
    for name, position in passes:
        seconds = time_interleaved({b: c[position] for b, c in calls.items()}, device, args.warmup, args.repeats)
        for backend, row in rows.items():
            row[f"{name}_ms"] = statistics.median(seconds[backend]) * 1e3
            if "pytorch" in seconds:
                row[f"{name}_speedup"] = median_ratio(seconds["pytorch"], seconds[backend])
            row[f"{name}_peak_mb"] = peak_memory_mb(calls[backend][position], device)
    return rows


def format_table(rows, has_memory):
    header = ["case", "B", "Q", "backend", "fwd ms", "fwd x", "fwd+bwd ms", "fwd+bwd x"]
    if has_memory:
        header += ["fwd MiB", "fwd+bwd MiB"]
    lines = [header]
    for r in rows:
        line = [r["case"], str(r["batch"]), str(r["queries"]), r["backend"]]
        for name in ("forward", "forward_backward"):
            line += [f"{r[name + '_ms']:.2f}" if name + "_ms" in r else "-",
                     f"{r[name + '_speedup']:.2f}x" if name + "_speedup" in r else "-"]
        if has_memory:
            line += [f"{r['forward_peak_mb']:.0f}",
                     "-" if r.get("forward_backward_peak_mb") is None else f"{r['forward_backward_peak_mb']:.0f}"]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in lines)


def main(argv=None):
    args = parse_args(argv)
    check_arguments(args)
    device = torch.device(resolve_device(args.device, "--device", "--device cpu"))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype_names = args.dtype or (["float32", "float16", "bfloat16"] if device.type == "cuda" else ["float32"])
    backends = args.backends or available_backends(device)
    if "pytorch" not in backends:
        backends = ["pytorch"] + list(backends)  # the 1.0x baseline
    generator = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        description = torch.cuda.get_device_name(device)
    else:
        description = f"CPU, {torch.get_num_threads()} threads"
    print(f"MSDA benchmark on {description}; torch {torch.__version__}; backends {backends}", flush=True)
    all_rows = []
    for dtype_name in dtype_names:
        dtype = getattr(torch, dtype_name)
        rows = []
        for case in args.cases:
            for batch in args.batch:
                inputs = make_case(case, batch, args, dtype, device, generator)
                measured = measure_case(backends, inputs, args, device, f"{case} B={batch} {dtype_name}")
                rows += [{"case": case, "batch": batch, "queries": inputs[3].shape[1], "backend": backend,
                          "dtype": dtype_name, "device": description, **row} for backend, row in measured.items()]
                del inputs
        print(f"\n{dtype_name}:")
        print(format_table(rows, has_memory=device.type == "cuda"), flush=True)
        all_rows += rows
    if not all_rows:
        raise ValueError(f"no backend could run {', '.join(dtype_names)} on {device} (see the lines above)")
    if args.json:
        text = json.dumps(all_rows, indent=1)
        if args.json == "-":
            print(text)
        else:
            atomic_write(args.json, lambda f: f.write(text + "\n"), mode="w")
    return all_rows


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
