"""Timing helpers for benchmarks: synchronised wall-clock, medians after warm-up, peak memory."""
import contextlib
import resource
import statistics
import sys
import time

import torch

__all__ = [
    "synchronize", "time_calls", "summarize", "inference_latency", "peak_memory_mib", "reset_peak_memory", "autocast_for"
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


def summarize(seconds):
    """median / mean / min / max in milliseconds."""
    return {
        "median_ms": 1000 * statistics.median(seconds),
        "mean_ms": 1000 * statistics.fmean(seconds),
        "min_ms": 1000 * min(seconds),
        "max_ms": 1000 * max(seconds),
        "repeats": len(seconds),
    }


def reset_peak_memory(device):
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device):
    """CUDA: peak memory allocated by tensors since the last reset. CPU: the process's peak resident set size
    (includes Python, libraries and every earlier phase: an upper bound)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def autocast_for(device, amp_dtype):
    """An autocast context for ``device`` with ``amp_dtype`` (None = full precision)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=amp_dtype)


def inference_latency(model, inputs, device, warmup, repeats, amp_dtype=None):
    """Times ``model`` in eval mode on one image per call, cycling through ``inputs`` (dataset dicts).

    Returns :func:`summarize` of the per-image seconds.
    """
    model.eval()
    position = {"next": 0}

    @torch.no_grad()
    def one_image():
        item = inputs[position["next"] % len(inputs)]
        position["next"] += 1
        with autocast_for(device, amp_dtype):
            model([{**item, "image": item["image"].to(device)}])

    return summarize(time_calls(one_image, device, warmup, repeats))
