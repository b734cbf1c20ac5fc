"""The soak (``tools/soak.py``): one long training run, with periodic evaluation and checkpoints, whose resident
memory, open file handles and threads are sampled from outside at regular intervals; then a verdict on growth.

Warm-up: the iterations up to the first evaluation (or the first 10% when the run does not evaluate), so every
code path (training steps, evaluation, checkpoint writes) has run once before the baseline is taken. Of the samples
taken between the warm-up and the end of training (the last iteration logged; then the workers stop and the process
exits), the first and the last window (each ``window_fraction`` of them) are compared:

- resident memory (of the training process, and summed over its data-loader workers): the median of the last window
  may exceed the median of the first by at most ``Limits.rss_growth`` (a fraction);
- open file handles and threads (the process and its workers together): the median of the last window may exceed
  the largest count of the first window by at most ``Limits.fd_growth`` / ``Limits.thread_growth`` (default 0: no
  leak). Medians and the first window's maximum keep a handle open for one checkpoint write from counting as a leak.
"""
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List

from .process_monitor import check_proc_available, sample_tree

__all__ = ["Limits", "SOAK_OVERRIDES", "Sample", "SampleTable", "SoakRun", "Verdict", "run_soak", "soak_verdict",
           "warmup_iterations"]

# The tree config at a reduced input size (multi-scale 128-192 px instead of 288-384, evaluation at 160 px):
# 1,000 iterations, an evaluation every 200, a checkpoint every 100 (two kept, so pruning runs too).
SOAK_OVERRIDES = (
    "train.max_iter=1000",
    "train.eval_period=200",
    "train.checkpointer.period=100",
    "train.checkpointer.max_to_keep=2",
    "train.log_period=10",
    "dataloader.train.mapper.augmentation.2.short_edge_length=[128,160,192]",
    "dataloader.train.mapper.augmentation.2.max_size=256",
    "dataloader.train.mapper.augmentation_with_crop.2.crop_size=[96,160]",
    "dataloader.train.mapper.augmentation_with_crop.3.short_edge_length=[128,160,192]",
    "dataloader.train.mapper.augmentation_with_crop.3.max_size=256",
    "dataloader.test.mapper.augmentation.0.short_edge_length=160",
    "dataloader.test.mapper.augmentation.0.max_size=256",
)
_MEASURES = ("rss_mib", "workers_rss_mib", "fds", "threads")


@dataclass
class Sample:
    """One look at the training process tree."""

    iterations: int  # iterations the run had logged as done
    seconds: float  # since launch
    rss_mib: float  # the training process
    workers: int  # its data-loader workers (descendant processes)
    workers_rss_mib: float  # summed over the workers
    fds: int  # open file handles of the process and its workers
    threads: int  # threads of the process and its workers


@dataclass
class Limits:
    rss_growth: float = 0.05  # fraction of the post-warm-up baseline
    fd_growth: int = 0
    thread_growth: int = 0


@dataclass
class Verdict:
    warmup_iterations: int
    window: int = 0  # samples in each of the compared windows
    measures: Dict[str, dict] = field(default_factory=dict)  # name -> baseline, final, growth, limit
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self):
        return not self.problems


def warmup_iterations(max_iter, eval_period):
    """Up to the first evaluation when the run evaluates before its end, else the first 10% of the iterations."""
    return eval_period if 0 < eval_period < max_iter else max(1, max_iter // 10)


def soak_verdict(samples, warmup, max_iter, limits, window_fraction=0.1):
    """Compares the first and the last window of the samples taken after ``warmup`` iterations and before the run
    logged its last one (``max_iter``: after it, the data-loader workers stop and the process exits), see the module
    docstring. The verdict's problems are empty when every measure stays within ``limits``."""
    verdict = Verdict(warmup)
    after = [s for s in samples if warmup <= s.iterations < max_iter]
    if len(after) < 2:
        verdict.problems.append(f"{len(after)} sample(s) between the warm-up ({warmup} iterations) and the end of "
                                f"training ({max_iter}): the run is too short or the samples too far apart to judge")
        return verdict
    verdict.window = max(1, round(len(after) * window_fraction))
    first, last = after[:verdict.window], after[-verdict.window:]
    for name in _MEASURES:
        final = statistics.median(getattr(s, name) for s in last)
        if name.endswith("rss_mib"):
            baseline = statistics.median(getattr(s, name) for s in first)
            growth = final / baseline - 1 if baseline else 0.0
            verdict.measures[name] = dict(baseline=baseline, final=final, growth=growth, limit=limits.rss_growth)
            if growth > limits.rss_growth:
                verdict.problems.append(f"{name}: grew {growth:.1%} after warm-up ({baseline:.0f} -> {final:.0f} MiB;"
                                        f" limit {limits.rss_growth:.0%})")
        else:
            baseline = max(getattr(s, name) for s in first)
            limit = limits.fd_growth if name == "fds" else limits.thread_growth
            verdict.measures[name] = dict(baseline=baseline, final=final, growth=final - baseline, limit=limit)
            if final - baseline > limit:
                verdict.problems.append(f"{name}: {final:g} at the end, {baseline} after warm-up (limit +{limit}): "
                                        "leaked")
    return verdict


@dataclass
class SoakRun:
    samples: List[Sample]
    exit_status: int
    iterations: int  # the iterations the run logged as done
    seconds: float


def run_soak(command, output_dir, log_path, sample_every_s, echo=None):
    """Runs ``command`` (a :class:`TrainingCommand`) into ``output_dir``, sampling its process tree every
    ``sample_every_s`` seconds; ``echo(sample)`` is called for each sample."""
    check_proc_available()
    samples = []
    next_at = [0.0]

    def take_sample(run, now):
        if now < next_at[0]:
            return
        next_at[0] = now + sample_every_s
        usage = sample_tree(run.pid)
        if usage is not None:
            last = run.last_iteration()
            samples.append(Sample(0 if last is None else last + 1, now - run.start, **asdict(usage)))
            if echo is not None:
                echo(samples[-1])

    run = command.start(output_dir, log_path, poll_s=min(0.25, sample_every_s))
    try:
        run.wait(on_poll=take_sample)
    finally:
        run.close()
    last = run.last_iteration()
    return SoakRun(samples, run.process.returncode, 0 if last is None else last + 1, time.monotonic() - run.start)


class SampleTable:
    """Rows for the samples worth showing, chosen as they come so that a long soak shows its progress: the first
    sample, the first at or past each ``1 / (rows - 1)`` of ``max_iter``, the first after the warm-up (marked) and
    the last one (from :meth:`close`)."""

    HEADER = f"{'iter':>6} {'time s':>7} {'RSS MiB':>8} {'workers':>7} {'wRSS MiB':>8} {'fds':>5} {'threads':>7}"

    def __init__(self, max_iter, warmup, rows=11):
        self.warmup = warmup
        self.step = max_iter / (rows - 1)
        self._due = 0.0  # the iterations the next evenly spread row waits for
        self._warm = False
        self._unshown = None  # the last sample, while it has no row

    def add(self, sample):
        """The rows this sample adds (none or one)."""
        warm = not self._warm and sample.iterations >= self.warmup
        due = sample.iterations >= self._due
        self._warm = self._warm or warm
        if not (warm or due):
            self._unshown = sample
            return []
        if due:
            self._due = (math.floor(sample.iterations / self.step) + 1) * self.step
        self._unshown = None
        return [_row(sample, "  <- warm-up over" if warm else "")]

    def close(self):
        """The last sample's row, unless it has one."""
        return [] if self._unshown is None else [_row(self._unshown)]


def _row(s, mark=""):
    return (f"{s.iterations:>6} {s.seconds:>7.1f} {s.rss_mib:>8.1f} {s.workers:>7} {s.workers_rss_mib:>8.1f} "
            f"{s.fds:>5} {s.threads:>7}{mark}")

