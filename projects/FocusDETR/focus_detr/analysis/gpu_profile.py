"""Where a call's time goes on a GPU: device busy time against wall time, kernel launches, host<->device copies and
host synchronisations per call, read from a ``torch.profiler`` trace.

The trace is read in its Chrome-trace form (``export_chrome_trace``: a list of ``{"ph", "cat", "name", "ts", "dur"}``
events, times in microseconds), whose categories are stable across torch versions: device work is ``kernel``,
``gpu_memcpy`` and ``gpu_memset``; the host's CUDA API calls are ``cuda_runtime`` / ``cuda_driver`` (a driver
call inside a runtime call is the same request, counted once); operators are
``cpu_op``; each profiled call is one ``user_annotation`` named :data:`CALL_ANNOTATION`. API calls and operators are
counted inside those annotations only (the harness's own synchronisation after each call is outside them); device
work is counted over the whole trace, since a call's kernels may run after its host side has returned.

The busy fraction divides the device's active time (the union of kernel, copy and memset intervals) by the wall time
of an unprofiled call, because the profiler's callbacks slow the host down: the profiled wall time would understate
it. Both are reported.
"""
import json
import os
import statistics
import tempfile
import time
from bisect import bisect_right
from collections import Counter
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import torch

from .timing import synchronize, time_calls

__all__ = ["CALL_ANNOTATION", "merged_length", "profile_calls", "profile_summary", "trace_summary"]

CALL_ANNOTATION = "focus_detr.profiled_call"
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
# Host calls that start device work (a CUDA graph replay is one launch of many kernels).
LAUNCH_CALLS = frozenset({
    "cudaLaunchKernel", "cudaLaunchKernelExC", "cudaLaunchCooperativeKernel", "cuLaunchKernel", "cuLaunchKernelEx",
    "cudaGraphLaunch", "cuGraphLaunch",
})
# Host calls that wait for the device: what `.item()`, `.tolist()`, `bool(tensor)`, `nonzero` and data-dependent
# shapes end in (a copy to the host, then a stream synchronisation), and explicit synchronisations.
SYNC_CALLS = frozenset({
    "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpy2D",
    "cudaMemcpyFromSymbol", "cudaMemcpyToSymbol", "cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize",
    "cuMemcpyDtoH_v2", "cuMemcpyHtoD_v2",
})
CAST_OPS = frozenset({"aten::_to_copy"})
TOP_KERNELS = 10


def merged_length(intervals: Iterable[Tuple[float, float]]) -> float:
    """Total length covered by ``(start, end)`` intervals, overlaps counted once."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def _copy_direction(name: str) -> str:
    for direction in ("HtoD", "DtoH", "DtoD", "HtoH", "PtoP"):
        if direction in name:
            return direction
    return "other"


def trace_summary(events: Sequence[Dict], calls: int) -> Dict:
    """Per-call figures of a Chrome trace holding ``calls`` profiled calls, each a ``user_annotation`` named
    :data:`CALL_ANNOTATION`.

    Returns ``device_active_ms`` (union of device intervals), ``kernel_ms`` (sum of kernel durations), ``kernels``,
    ``copies`` (by direction: ``HtoD``, ``DtoH``, ``DtoD``, ...), ``memsets``, ``launches`` and ``syncs`` (host API
    calls inside the calls; ``sync_calls`` by name), ``operators`` (every ``cpu_op``, nested ones included) and
    ``casts`` (``aten::_to_copy``), and ``top_kernels`` (name, launches and ms per call, longest first).
    """
    if calls <= 0:
        raise ValueError(f"need at least one profiled call, got {calls}")
    complete = [e for e in events if e.get("ph") == "X"]
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in complete
                     if e.get("cat") == "user_annotation" and e.get("name") == CALL_ANNOTATION)
    if len(windows) != calls:
        raise ValueError(f"the trace holds {len(windows)} '{CALL_ANNOTATION}' annotations, expected {calls}")
    starts = [start for start, _ in windows]

    def inside(event):
        index = bisect_right(starts, event["ts"]) - 1
        return index >= 0 and event["ts"] <= windows[index][1]

    runtime = sorted((e["ts"], e["ts"] + e["dur"]) for e in complete if e.get("cat") == "cuda_runtime")
    runtime_starts = [start for start, _ in runtime]

    def within_runtime_call(event):  # a driver call the runtime made for a call already counted
        index = bisect_right(runtime_starts, event["ts"]) - 1
        return index >= 0 and event["ts"] + event["dur"] <= runtime[index][1]

    device = [e for e in complete if e.get("cat") in DEVICE_CATEGORIES]
    kernels = [e for e in device if e["cat"] == "kernel"]
    api = Counter(e["name"] for e in complete if inside(e) and (
        e.get("cat") == "cuda_runtime" or (e.get("cat") == "cuda_driver" and not within_runtime_call(e))))
    operators = Counter(e["name"] for e in complete if e.get("cat") == "cpu_op" and inside(e))
    copies = Counter(_copy_direction(e["name"]) for e in device if e["cat"] == "gpu_memcpy")
    kernel_time, kernel_count = Counter(), Counter()
    for e in kernels:
        kernel_time[e["name"]] += e["dur"]
        kernel_count[e["name"]] += 1
    per_call = 1.0 / calls
    return {
        "calls": calls,
        "device_active_ms": merged_length((e["ts"], e["ts"] + e["dur"]) for e in device) / 1000 * per_call,
        "kernel_ms": sum(e["dur"] for e in kernels) / 1000 * per_call,
        "kernels": len(kernels) * per_call,
        "copies": {direction: n * per_call for direction, n in sorted(copies.items())},
        "memsets": sum(e["cat"] == "gpu_memset" for e in device) * per_call,
        "launches": sum(n for name, n in api.items() if name in LAUNCH_CALLS) * per_call,
        "syncs": sum(n for name, n in api.items() if name in SYNC_CALLS) * per_call,
        "sync_calls": {name: n * per_call for name, n in sorted(api.items()) if name in SYNC_CALLS},
        "operators": sum(operators.values()) * per_call,
        "casts": sum(n for name, n in operators.items() if name in CAST_OPS) * per_call,
        "top_kernels": [
            {"name": name[:120], "launches": kernel_count[name] * per_call, "ms": t / 1000 * per_call}
            for name, t in kernel_time.most_common(TOP_KERNELS)
        ],
    }


def profile_calls(function: Callable[[], None], device, calls: int) -> Tuple[List[Dict], List[float]]:
    """Runs ``function()`` ``calls`` times under ``torch.profiler`` (CPU activity, and CUDA on a CUDA device), each
    call in a :data:`CALL_ANNOTATION` range followed by a device synchronisation outside it. Returns the trace's
    events and each call's wall seconds (synchronised, under the profiler)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU]
    if torch.device(device).type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    seconds = []
    synchronize(device)
    with profile(activities=activities) as profiler:
        for _ in range(calls):
            start = time.perf_counter()
            with record_function(CALL_ANNOTATION):
                function()
            synchronize(device)
            seconds.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        profiler.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    return events, seconds


def profile_summary(function: Callable[[], None], device, warmup: int, repeats: int, profiled: int) -> Dict:
    """:func:`trace_summary` of ``profiled`` calls, after ``warmup`` calls and ``repeats`` unprofiled timed ones,
    plus ``wall_ms`` (unprofiled median), ``profiled_wall_ms`` (median under the profiler), ``busy_fraction``
    (``device_active_ms / wall_ms``) and ``busy_fraction_profiled``; both fractions are None without device work
    (on a CPU)."""
    wall = statistics.median(time_calls(function, device, warmup, repeats)) * 1000
    events, seconds = profile_calls(function, device, profiled)
    summary = trace_summary(events, profiled)
    if torch.device(device).type == "cuda" and not summary["kernels"]:
        # zeros would read as "no GPU work": the profiler could not trace the device (CUPTI missing or busy)
        raise RuntimeError("torch.profiler recorded no CUDA kernels: is CUPTI available to this torch?")
    profiled_wall = statistics.median(seconds) * 1000
    active = summary["device_active_ms"]
    summary.update({
        "wall_ms": wall,
        "profiled_wall_ms": profiled_wall,
        "busy_fraction": active / wall if active else None,
        "busy_fraction_profiled": active / profiled_wall if active else None,
    })
    return summary
