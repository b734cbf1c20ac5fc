#!/usr/bin/env python
"""Speed and memory of a config's model: inference latency (median after warm-up) and images/s at batch 1 (or
``--batch-size N``: N images per call, padded into one batch; then times are per call), training iteration time
(the step ``train_net.py`` takes: gradient clipping and the loss read included), peak memory. Prints a table and,
with ``--json``, writes the numbers. Nothing here is a test.
Random weights (``train.init_checkpoint`` is not loaded): the work done does not depend on their values.

Every model run is interleaved with a yardstick run (torchvision ``resnet50()``, random weights, eval, float32,
batch 1, same input size and threads, never autocast), and times are also reported as the median per-round ratio to
it: ``ratio_to_yardstick`` (inference) and ``train_ratio_to_yardstick`` (one training step), comparable across
machines and loads. ``--json`` writes ``inference_s``, ``yardstick_s``, ``ratio_to_yardstick``, ``train_step_s``,
``train_ratio_to_yardstick`` and ``peak_rss_mib`` (CPU: the peak resident set over the timed phases; CUDA: the peak
allocated) plus per-task details, and ``glibc_tunables`` (the environment's ``GLIBC_TUNABLES``: allocator settings change both
the model's and the yardstick's times on CPU).

Precision: inference runs under the config's ``train.inference_amp``, the training step under ``train.amp`` (both
off by default: float32); ``--amp`` turns both on (``auto``: bfloat16 where supported). ``--compare-fp32`` also runs
the model in float32 in every round, interleaved, and reports ``fp32_ms`` and ``ratio_to_fp32`` per task.

``--cuda-graphs`` (CUDA only) times inference through ``focus_detr.engine.cuda_graphs.CUDAGraphInference`` (the
network replayed from a CUDA graph per input size, captured during the warm-up) and also runs eager inference in
every round, interleaved: ``eager_ms`` and ``ratio_to_eager``.

``--flop-floor`` also counts, after the timing, the multiply-adds each task executes in convolutions, matrix
products and attention (a training step's backward included; ``focus_detr.analysis.flops.executed_multiply_adds``)
and those of the yardstick: ``flop_ratio_to_yardstick`` / ``train_flop_ratio_to_yardstick``. A model that ran its
multiply-adds at the yardstick's own rate would read exactly that many yardstick units, so a time ratio below it
means the model computes faster per multiply-add than a plain ResNet-50 forward does on that machine.

``--count-dispatch`` also counts, after the timing and a warm-up call, the ATen operators one inference (one image)
and one training step dispatch, and the operations among them that make the host wait for a GPU (value reads such
as ``.item()``, data-dependent shapes, host-device copies; ``focus_detr.analysis.dispatch_counts``):
``operators_per_inference``, ``syncs_per_inference``, ``operators_per_train_step``, ``syncs_per_train_step``.
On the CPU its tensors are told apart as a GPU run would hold them: the inputs, in host memory as the data loader
leaves them, count a copy where they are moved to the device, and reads of host data count none.
``--sync-sites`` also lists where in the code each synchronisation comes from.

``--tasks data`` times the config's training loader as training builds it (``dataloader.train``: its workers,
mapper, augmentation and batch size; ``--warmup`` batches untimed, then ``--repeats``): ``data`` in the JSON, with
``images_per_s``. Beside a measured training step it says whether the loader keeps up (detectron2's ``--task data``).

Examples:
    python tools/benchmark.py --config-file configs/focus_detr_r50_4scale_12ep.py --device cpu --input-size 800 1333
    python tools/benchmark.py --config-file configs/focus_detr_r50_4scale_12ep.py --device cuda --amp --json bench.json
    python tools/benchmark.py --config-file configs/focus_detr_r50_4scale_12ep.py --device cpu --amp --compare-fp32
    python tools/benchmark.py --config-file configs/focus_detr_r18_trees.py --dataset-images 9 --tasks inference
    python tools/benchmark.py --config-file configs/focus_detr_r50_4scale_12ep.py --device cpu --flop-floor
    python tools/benchmark.py --config-file configs/focus_detr_r18_trees.py --input-size 512 512 --count-dispatch
    python tools/benchmark.py --config-file configs/focus_detr_r18_trees.py --tasks train data --train-batch-size 2
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import itertools
import os
import platform
import statistics
import sys

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.utils.events import EventStorage

from focus_detr.analysis.dispatch_counts import dispatch_counts
from focus_detr.analysis.flops import executed_multiply_adds
from focus_detr.analysis.inputs import dataset_inputs, synthetic_inputs, synthetic_training_batch
from focus_detr.analysis.timing import (
    inference_call,
    median_ratio,
    peak_memory_mib,
    reset_peak_memory,
    resnet50_yardstick,
    batch_sizes_cycle,
    summarize,
    time_data_loader,
    time_interleaved,
)
from focus_detr.engine import (
    build_model,
    inference_amp_dtype,
    load_config,
    resolve_amp_dtype,
    resolve_device,
    training_amp_dtype,
    write_json,
)
from focus_detr.engine.arguments import add_overrides_argument, parse_args_with_overrides
from focus_detr.engine.cuda_graphs import CUDAGraphInference, graphs_available
from focus_detr.engine.runner import build_trainer
from focus_detr.engine.settings import check_output_file, require_sections
from focus_detr.engine.cli import run_reporting_errors


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if visible)")
    parser.add_argument("--amp", action="store_true",
                        help="autocast inference and training (bfloat16 where supported, else float16), whatever "
                             "train.inference_amp / train.amp say")
    parser.add_argument("--compare-fp32", action="store_true",
                        help="with autocast on: also time float32 runs, interleaved, and report the ratio")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="inference replayed from CUDA graphs (CUDA only), timed against eager inference")
    parser.add_argument("--flop-floor", action="store_true",
                        help="also count each task's multiply-adds against the yardstick's (after the timing)")
    parser.add_argument("--count-dispatch", action="store_true",
                        help="also count each task's operators and host-device synchronisations (after the timing)")
    parser.add_argument("--sync-sites", action="store_true",
                        help="with --count-dispatch: also list the code locations of the synchronisations")
    parser.add_argument("--tasks", nargs="+", choices=("inference", "train", "data"), default=["inference", "train"],
                        help="data: how fast the config's training loader delivers batches (its workers, mapper, "
                             "batch)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=[800, 1333])
    parser.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="images per inference call (one padded batch; synthetic: N different images of one size)")
    parser.add_argument("--dataset-images", type=int, default=0, metavar="N",
                        help="time inference on the first N test images of the config's dataset instead")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--train-batch-size", type=int, default=1)
    parser.add_argument("--train-boxes", type=int, default=3, metavar="N", help="random ground-truth boxes per image")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--json", metavar="PATH")
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


def _interleaved_with_yardstick(function, yardstick, device, warmup, repeats, baselines=None):
    """:func:`summarize` of ``function``'s times, with ``yardstick_ms`` (median) and ``ratio_to_yardstick``; for each
    ``name -> function`` of ``baselines`` (the same work done otherwise, e.g. "fp32") also ``{name}_ms`` and
    ``ratio_to_{name}``, from the same rounds."""
    reset_peak_memory(device)
    functions = {"model": function, "yardstick": yardstick, **(baselines or {})}
    seconds = time_interleaved(functions, device, warmup, repeats)
    stats = summarize(seconds["model"])
    stats["peak_memory_mib"] = peak_memory_mib(device)
    stats["yardstick_ms"] = summarize(seconds["yardstick"])["median_ms"]
    stats["ratio_to_yardstick"] = median_ratio(seconds["model"], seconds["yardstick"])
    for name in baselines or {}:
        stats[f"{name}_ms"] = summarize(seconds[name])["median_ms"]
        stats[f"ratio_to_{name}"] = median_ratio(seconds["model"], seconds[name])
    return stats


def _flop_floor(task_run, yardstick):
    """``gmac`` (multiply-adds of one ``task_run``, in G), ``yardstick_gmac`` and their ratio ``flop_ratio``; both
    the first call of their cycle of inputs."""
    yardstick.restart()
    task, unit = executed_multiply_adds(task_run), executed_multiply_adds(yardstick)
    return {"gmac": task / 1e9, "yardstick_gmac": unit / 1e9, "flop_ratio": task / unit}


def _dispatch_counts(task_run, device, sync_sites, inputs):
    """``operators`` and ``syncs`` of one ``task_run`` after a warm-up call (plus their reasons, and sites if asked);
    ``inputs``: what it reads, where a data loader leaves it (host memory, whose moves to a GPU are copies)."""
    counts = dispatch_counts(task_run, device, record_sites=sync_sites, host_data=inputs, warmup=1)
    return {"dispatch": counts.as_dict()}


def benchmark_inference(model, inputs, device, amp_dtype, warmup, repeats, yardstick, compare_fp32=False,
                        flop_floor=False, batch_size=1, count_dispatch=False, sync_sites=False, cuda_graphs=False):
    """Times one call of ``batch_size`` images (``median_ms`` etc. per call; ``images_per_s`` counts images)."""
    eager = model
    if cuda_graphs:
        model = CUDAGraphInference(eager)
    one_batch = inference_call(model, inputs, device, amp_dtype, batch_size)
    baselines = {}
    if compare_fp32:
        baselines["fp32"] = inference_call(model, inputs, device, batch_size=batch_size)
    if cuda_graphs:
        baselines["eager"] = inference_call(eager, inputs, device, amp_dtype, batch_size)
    stats = _interleaved_with_yardstick(one_batch, yardstick, device, warmup, repeats, baselines)
    if cuda_graphs:
        stats["cuda_graphs"] = dict(model.counts)
    stats["batch_size"] = batch_size
    stats["images_per_s"] = batch_size * 1000.0 / stats["median_ms"]
    if compare_fp32:
        stats["fp32_images_per_s"] = batch_size * 1000.0 / stats["fp32_ms"]
    if flop_floor:
        # the call that is timed (all batch_size images), eager: a CUDA graph's replay dispatches no operator
        stats.update(_flop_floor(inference_call(eager, inputs, device, amp_dtype, batch_size), yardstick))
    if count_dispatch:
        stats.update(_dispatch_counts(inference_call(model, inputs[:1], device, amp_dtype), device, sync_sites,
                                      inputs[:1]))
    return stats


def benchmark_training(cfg, model, optimizer, batch, device, amp_dtype, warmup, repeats, yardstick, compare_fp32=False,
                       flop_floor=False, count_dispatch=False, sync_sites=False):
    """One step as ``train_net.py`` takes it (:class:`DetrTrainer`): forward, backward, the config's gradient
    clipping, the loss read and the config's optimizer (its own implementation choices, e.g. fused, count)."""
    model.train()

    def step_in(dtype):
        trainer = build_trainer(cfg, model, itertools.repeat(batch), optimizer, device, dtype)
        trainer.iter = 0
        storage = EventStorage()

        def one_step():
            with storage:
                trainer.run_step()

        return one_step

    # counted first: the optimizer's state (non-fused AdamW keeps its step on the host) is then built in the count's
    # warm-up, where the host tracking sees it; built in the timing before, it would count as device data
    counted = _dispatch_counts(step_in(amp_dtype), device, sync_sites, batch) if count_dispatch else {}
    baselines = {"fp32": step_in(None)} if compare_fp32 else None
    stats = _interleaved_with_yardstick(step_in(amp_dtype), yardstick, device, warmup, repeats, baselines)
    stats["images_per_s"] = len(batch) * 1000.0 / stats["median_ms"]
    if flop_floor:
        stats.update(_flop_floor(step_in(amp_dtype), yardstick))
    stats.update(counted)
    return stats


# What the training configs train with; a model-only config (no ``optimizer``) is timed with it too.
COMMON_OPTIMIZER_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "common", "optim.py"
)


def benchmark_data_loading(cfg, warmup, repeats):
    """Batches per second of ``cfg.dataloader.train`` as training builds it (its workers, mapper, batch size)."""
    require_sections(cfg, ("dataloader.train",), "--tasks data")
    node = cfg.dataloader.train
    seconds, images = time_data_loader(instantiate(node), warmup, repeats)
    stats = summarize(seconds)
    # from the median, as the training step's images/s, which it is compared with
    return {"inputs": f"dataloader.train, {node.get('num_workers', 0)} workers", "batch_size": images[0],
            "median_ms": stats["median_ms"], "mean_ms": stats["mean_ms"],
            "images_per_s": statistics.median(images) / max(stats["median_ms"] / 1000, 1e-9)}


def _optimizer_of(cfg, model):
    """The config's optimizer, else the training configs' (``configs/common/optim.py`` ``AdamW``)."""
    optimizer = cfg.optimizer if "optimizer" in cfg else LazyConfig.load(COMMON_OPTIMIZER_CONFIG).AdamW
    optimizer.params.model = model
    return instantiate(optimizer)


def _headline(results):
    """The flat summary keys of ``--json`` (None for a task not run)."""
    inference, train = results.get("inference"), results.get("train")
    timed = [stats for stats in (inference, train) if stats]
    return {
        "inference_s": inference["median_ms"] / 1000 if inference else None,
        "yardstick_s": timed[0]["yardstick_ms"] / 1000 if timed else None,
        "ratio_to_yardstick": inference["ratio_to_yardstick"] if inference else None,
        "train_step_s": train["median_ms"] / 1000 if train else None,
        "train_ratio_to_yardstick": train["ratio_to_yardstick"] if train else None,
        "peak_rss_mib": max(stats["peak_memory_mib"] for stats in timed) if timed else None,
        "flop_ratio_to_yardstick": inference.get("flop_ratio") if inference else None,
        "train_flop_ratio_to_yardstick": train.get("flop_ratio") if train else None,
        "operators_per_inference": inference["dispatch"]["operators"] if inference and "dispatch" in inference else None,
        "syncs_per_inference": inference["dispatch"]["syncs"] if inference and "dispatch" in inference else None,
        "operators_per_train_step": train["dispatch"]["operators"] if train and "dispatch" in train else None,
        "syncs_per_train_step": train["dispatch"]["syncs"] if train and "dispatch" in train else None,
    }


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "") if dtype is not None else None


def _hardware(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main(args):
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--train-batch-size", args.train_batch_size, 1),
                               ("--train-boxes", args.train_boxes, 0), ("--dataset-images", args.dataset_images, 0),
                               ("--threads", args.threads, 0)):
        if value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, args.opts)
    if args.json:  # before the timing, not after it
        check_output_file(args.json, "--json", "report.json", inputs={"--config-file": args.config_file})
    device = resolve_device(args.device, "--device", "--device cpu")
    if args.cuda_graphs and not graphs_available(device):
        raise ValueError(f"--cuda-graphs needs a CUDA device, got --device {device}")
    inference_dtype, train_dtype = inference_amp_dtype(cfg, device), training_amp_dtype(cfg, device)
    if args.amp:
        inference_dtype = inference_dtype or resolve_amp_dtype("auto", device)
        train_dtype = train_dtype or resolve_amp_dtype("auto", device)
    # only where autocast is on: a float32 run against itself says nothing
    count_dispatch = args.count_dispatch or args.sync_sites
    compare = {"inference": args.compare_fp32 and inference_dtype is not None,
               "train": args.compare_fp32 and train_dtype is not None}
    if args.compare_fp32 and not any(compare[task] for task in compare if task in args.tasks):
        raise ValueError("--compare-fp32 times autocast against float32, and nothing runs in autocast: add --amp (or "
                         "train.inference_amp.enabled=True / train.amp.enabled=True)")
    # no train.init_checkpoint: the weights' values do not change the work done (token counts follow the keep
    # ratios), so nothing is read or downloaded
    model = build_model(cfg, device)
    height, width = args.input_size
    results = {
        "config_file": args.config_file,
        "device": device,
        "hardware": _hardware(device),
        "inference_amp_dtype": _dtype_name(inference_dtype),
        "train_amp_dtype": _dtype_name(train_dtype),
        "torch": torch.__version__,
        # glibc's allocator settings move both the model's and the yardstick's times (docs/benchmarks.md)
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    }
    rows = []
    if "inference" in args.tasks:
        if args.dataset_images > 0:
            inputs = dataset_inputs(cfg, args.dataset_images)
            described = f"first {len(inputs)} test images of {cfg.dataloader.test.dataset.names}"
        else:
            inputs, described = synthetic_inputs(height, width, args.batch_size), f"synthetic {height}x{width}"
        # dataset images vary in size: the yardstick cycles through the sizes of each call's first image with it
        # (the flop floor counts the first call of each)
        yardstick_sizes = batch_sizes_cycle(inputs, args.batch_size)
        yardstick = resnet50_yardstick(yardstick_sizes, device)
        results["inference"] = {
            "inputs": described,
            "yardstick_inputs": [list(size) for size in yardstick_sizes],
            **benchmark_inference(
                model, inputs, device, inference_dtype, args.warmup, args.repeats, yardstick, compare["inference"],
                args.flop_floor, args.batch_size, count_dispatch, args.sync_sites, args.cuda_graphs,
            ),
        }
        rows.append((f"inference (batch {args.batch_size})", described, results["inference"]))
    if "train" in args.tasks:
        num_classes = getattr(getattr(model, "module", model), "num_classes", 1)
        batch = synthetic_training_batch(height, width, args.train_batch_size, args.train_boxes, num_classes)
        batch = [{**x, "image": x["image"].to(device)} for x in batch]
        yardstick = resnet50_yardstick([(height, width)], device)
        optimizer = _optimizer_of(cfg, model)
        results["train"] = {
            "inputs": f"synthetic {args.train_batch_size} x {height}x{width}, {args.train_boxes} boxes each",
            **benchmark_training(
                cfg, model, optimizer, batch, device, train_dtype, args.warmup, args.repeats, yardstick, compare["train"],
                args.flop_floor, count_dispatch=count_dispatch, sync_sites=args.sync_sites,
            ),
        }
        rows.append((f"train step (batch {args.train_batch_size})", results["train"]["inputs"], results["train"]))
    if "data" in args.tasks:
        results["data"] = benchmark_data_loading(cfg, args.warmup, args.repeats)
    results.update(_headline(results))

    print(f"{args.config_file} on {results['hardware']} ({device}, autocast: inference "
          f"{results['inference_amp_dtype'] or 'off'}, training {results['train_amp_dtype'] or 'off'})")
    header = (f"{'task':<22}{'inputs':<40}{'median ms':>11}{'mean ms':>10}{'images/s':>10}{'yardstick ms':>14}"
              f"{'x yardstick':>13}{'peak MiB':>10}")
    print(header + "\n" + "-" * len(header))
    for task, described, stats in rows:
        print(f"{task:<22}{described:<40}{stats['median_ms']:>11.1f}{stats['mean_ms']:>10.1f}"
              f"{stats['images_per_s']:>10.2f}{stats['yardstick_ms']:>14.1f}{stats['ratio_to_yardstick']:>13.2f}"
              f"{stats['peak_memory_mib']:>10.0f}")
    print("x yardstick: median over rounds of (this run / the interleaved torchvision resnet50() forward, fp32, batch 1)")
    for task, described, stats in rows:
        if "ratio_to_fp32" in stats:
            print(f"{task}: autocast {stats['median_ms']:.1f} ms vs float32 {stats['fp32_ms']:.1f} ms interleaved, "
                  f"median ratio {stats['ratio_to_fp32']:.2f}x")
        if "ratio_to_eager" in stats:
            print(f"{task}: CUDA graphs {stats['median_ms']:.1f} ms vs eager {stats['eager_ms']:.1f} ms interleaved, "
                  f"median ratio {stats['ratio_to_eager']:.2f}x ({stats['cuda_graphs']})")
    for task, described, stats in rows:
        if "flop_ratio" in stats:
            print(f"{task}: {stats['gmac']:.1f} GMAC in convolutions, matrix products and attention, "
                  f"{stats['flop_ratio']:.2f}x the yardstick's {stats['yardstick_gmac']:.1f} GMAC: the time ratio "
                  f"a model running at the yardstick's multiply-add rate would read")
    for task, described, stats in rows:
        if "dispatch" in stats:
            counts = stats["dispatch"]
            print(f"{task}: {counts['operators']} operators dispatched, {counts['syncs']} host-device "
                  f"synchronisations (one call after a warm-up{', one image' if task.startswith('inference') else ''})")
            for reason, count in counts["syncs_by_reason"].items():
                print(f"  {count:>4} x {reason}")
            for site, count in counts["sync_sites"].items():
                print(f"  {count:>4} x at {site}")
    if "data" in results:
        data = results["data"]
        print(f"data loading ({data['inputs']}): median {data['median_ms']:.1f} ms per batch of "
              f"{data['batch_size']}, {data['images_per_s']:.2f} images/s")
        if "train" in results:
            step_rate = results["train"]["images_per_s"]
            verdict = ("keeps up with" if data["images_per_s"] >= step_rate else
                       "is slower than (training waits for data: raise dataloader.train.num_workers)")
            print(f"  the loader {verdict} the training step above ({step_rate:.2f} images/s; measured apart: on a "
                  "CPU the two also share its cores)")
    if torch.device(device).type == "cpu":
        print("peak MiB on CPU = peak resident set size of the whole process during that task")
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, parse_args()))
