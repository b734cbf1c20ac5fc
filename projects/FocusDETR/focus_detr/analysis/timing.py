"""Timing helpers for benchmarks: synchronised wall-clock, medians after warm-up, interleaved runs against a
yardstick, peak memory."""
import math
import os
import resource
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from ..engine.precision import amp_autocast

__all__ = [
    "synchronize",
    "time_calls",
    "time_data_loader",
    "time_interleaved",
    "median_ratio",
    "resnet50_yardstick",
    "batch_sizes_cycle",
    "summarize",
    "inference_call",
    "peak_memory_mib",
    "reset_peak_memory",
]


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(function, device, warmup, repeats):
    """Calls ``function()`` ``warmup`` times untimed, then ``repeats`` times; returns the list of seconds per call."""
    if repeats <= 0 or warmup < 0:
        raise ValueError(f"need repeats > 0 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        function()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def time_data_loader(loader, warmup: int, repeats: int):
    """How fast ``loader`` (an endless iterable of batches, such as the training loader) delivers: ``warmup``
    batches untimed (workers starting), then ``repeats`` batches, each timed from the arrival of the one before.
    Returns (seconds per batch, images per batch)."""
    if repeats <= 0 or warmup < 0:
        raise ValueError(f"need repeats > 0 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    batches = iter(loader)
    for _ in range(warmup):
        next(batches)
    seconds, images = [], []
    last = time.perf_counter()
    for _ in range(repeats):
        images.append(len(next(batches)))
        now = time.perf_counter()
        seconds.append(now - last)
        last = now
    del batches  # its data workers stop now, not at exit
    return seconds, images


def time_interleaved(functions: Dict[str, Callable], device, warmup, repeats) -> Dict[str, List[float]]:
    """Like :func:`time_calls` for several functions called in turn (one round = each function once), so that a
    slow or busy spell of the machine hits all of them alike; round r starts at the r-th function (in turn), so none
    always runs after the same neighbour (its caches, its frequency boost). Returns name -> seconds per call, in
    round order."""
    if repeats <= 0 or warmup < 0:
        raise ValueError(f"need repeats > 0 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        for function in functions.values():
            function()
    synchronize(device)
    seconds = {name: [] for name in functions}
    order = list(functions.items())
    for round_index in range(repeats):
        start_at = round_index % len(order)
        for name, function in order[start_at:] + order[:start_at]:
            start = time.perf_counter()
            function()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median_ratio(numerators: List[float], denominators: List[float]) -> float:
    """Median of the per-round ratios of two interleaved timings (robust to the machine's load drifting)."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def resnet50_yardstick(sizes: Sequence[Tuple[int, int]], device) -> Callable[[], None]:
    """A machine-speed unit: one forward of torchvision's ``resnet50()`` (random weights, eval, float32, batch 1,
    no autocast) per call, on a ``(1, 3, height, width)`` input, cycling through ``sizes`` ((height, width) each) in
    step with a model that cycles through images of those sizes (:func:`inference_call`; with batches, the size of
    each call's first image), so each round compares work at the same image size (``restart()`` starts the cycle
    again, as a new ``inference_call`` does). The inputs wait on the host and are copied to ``device`` per call, as
    the model's are, so they add nothing to the device's peak memory. Benchmarks report times also as multiples of
    it, measured in the same run, so numbers compare across machines and loads."""
    import torchvision

    if not sizes:
        raise ValueError("the yardstick needs at least one input size")
    network = torchvision.models.resnet50(weights=None).eval().to(device)
    generator = torch.Generator().manual_seed(0)
    images = {size: torch.randn(1, 3, *size, generator=generator) for size in dict.fromkeys(sizes)}
    position = {"next": 0}

    @torch.no_grad()
    def forward():
        network(images[sizes[position["next"] % len(sizes)]].to(device))
        position["next"] += 1

    forward.restart = lambda: position.update(next=0)
    return forward


def summarize(seconds):
    """median / mean / min / max in milliseconds."""
    return {
        "median_ms": 1000 * statistics.median(seconds),
        "mean_ms": 1000 * statistics.fmean(seconds),
        "min_ms": 1000 * min(seconds),
        "max_ms": 1000 * max(seconds),
        "repeats": len(seconds),
    }


_CLEAR_REFS = "/proc/self/clear_refs"


def reset_peak_memory(device):
    """CUDA: resets the allocator's peak. CPU on Linux: resets the process's peak resident set size to the current
    one (``/proc/self/clear_refs``); elsewhere the CPU peak cannot be reset."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif os.access(_CLEAR_REFS, os.W_OK):
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")


def _peak_rss_since_reset_mib():
    """VmHWM of /proc/self/status in MiB (the peak since the last :func:`reset_peak_memory`), None if unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    return None


def peak_memory_mib(device):
    """CUDA: peak memory allocated by tensors since the last reset. CPU: the process's peak resident set size (Python
    and libraries included) since the last reset on Linux, else since the process started (an upper bound)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = _peak_rss_since_reset_mib()
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def inference_call(model, inputs, device, amp_dtype=None, batch_size=1) -> Callable[[], None]:
    """A function running ``model`` (put in eval mode) on ``batch_size`` images per call (one batch), cycling
    through ``inputs`` (dataset dicts)."""
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, got {batch_size}")
    model.eval()
    position = {"next": 0}

    @torch.no_grad()
    def one_batch():
        batch = []
        for _ in range(batch_size):
            item = inputs[position["next"] % len(inputs)]
            position["next"] += 1
            batch.append({**item, "image": item["image"].to(device)})
        with amp_autocast(device, amp_dtype):
            model(batch)

    return one_batch


def batch_sizes_cycle(inputs, batch_size=1) -> List[Tuple[int, int]]:
    """(height, width) of the first image of each call of :func:`inference_call` (``batch_size`` images per call,
    cycling through ``inputs``) over one whole cycle of calls: the sizes a yardstick runs in step with it."""
    calls = len(inputs) // math.gcd(len(inputs), batch_size)
    return [tuple(inputs[(call * batch_size) % len(inputs)]["image"].shape[-2:]) for call in range(calls)]
