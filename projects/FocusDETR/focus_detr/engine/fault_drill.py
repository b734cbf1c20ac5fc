"""The fault drill (``tools/fault_drill.py``): kills training with SIGKILL at random moments (also in the middle of
checkpoint writes), resumes it with ``--resume`` until it finishes, and checks that the final checkpoint equals an
uninterrupted run's bit for bit (weights, optimizer, schedule, RNG and data-loader state) and that no torn or stale
file is left behind.

A trial kills 1..``max_kills`` runs, each at a moment drawn from the drill's seed:

- ``anytime``: a delay after launch, uniform up to when the uninterrupted run wrote its final checkpoint (start-up
  included);
- ``step``: a random part of a step after the log shows a random iteration of those the run still has to do;
- ``save``: a random part of the write time after the temporary file of a random checkpoint appears, so the kill
  lands while the checkpoint is being written (the file is checked for at the moment of the kill).

Then ``--resume`` runs without interruption; a kill after the final checkpoint leaves a finished run, for which
``--resume`` must say that there is nothing to resume.
"""
import os
import random
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import List

import torch

from ..checkpoint import read_weights_file
from .checkpoint import read_checkpoint_tag
from .training_process import POLL_S, TEMPORARY_FILE, last_error

__all__ = ["DRILL_OVERRIDES", "KINDS", "Kill", "Reference", "Trial", "check_output", "checkpoint_differences",
           "describe_trial", "run_reference", "run_trial", "save_names", "summarize"]

# The tree config shortened for the drill: 8 iterations at 128 px, a checkpoint every 2, one data worker (so a kill
# also hits a worker process), no evaluation.
DRILL_OVERRIDES = (
    "train.max_iter=8",
    "train.checkpointer.period=2",
    "train.eval_period=0",
    "dataloader.evaluator=null",
    "train.log_period=1",
    "dataloader.train.num_workers=1",
    "dataloader.train.mapper.augmentation.2.short_edge_length=[128]",
    "dataloader.train.mapper.augmentation.2.max_size=160",
    "dataloader.train.mapper.augmentation_with_crop.2.crop_size=[96,128]",
    "dataloader.train.mapper.augmentation_with_crop.3.short_edge_length=[128]",
    "dataloader.train.mapper.augmentation_with_crop.3.max_size=160",
)
KINDS = ("anytime", "step", "save")


@dataclass
class Reference:
    """What the uninterrupted run took: seconds from launch to exit and to its final checkpoint write, per step, and
    per checkpoint write."""

    total_s: float
    final_save_s: float
    step_s: float
    write_s: dict


@dataclass
class Kill:
    kind: str
    target: str = ""  # the iteration or checkpoint the kill was aimed at
    after_s: float = 0.0  # seconds after the launch / the iteration line / the temporary file appeared
    landed: str = ""  # where the run was when killed (or "missed: the run finished first")
    mid_write: bool = False


@dataclass
class Trial:
    index: int
    kills: List[Kill] = field(default_factory=list)
    resumed_at: List[int] = field(default_factory=list)  # the iteration each --resume started training at
    removed_temporary_files: int = 0
    fell_back: int = 0  # resumes that skipped an unreadable checkpoint
    finished_before_kill: bool = False  # a kill after the final checkpoint: --resume said there is nothing to do
    problems: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self):
        return not self.problems


def run_reference(command, folder):
    """The uninterrupted run of ``command`` (a :class:`TrainingCommand`) in ``folder``/reference: the path of its
    final checkpoint and its timings."""
    output_dir = os.path.join(folder, "reference")
    log_path = os.path.join(folder, "reference.log")
    run = command.start(output_dir, log_path)
    try:
        run.wait()
    finally:
        run.close()
    if run.process.returncode != 0:
        raise ValueError(f"the uninterrupted run failed (exit {run.process.returncode}): {last_error(log_path)}")
    seen = [run.iterations[i] for i in sorted(run.iterations)]
    steps = [b - a for a, b in zip(seen, seen[1:])]
    reference = Reference(
        total_s=time.monotonic() - run.start,
        final_save_s=(run.first_write("model_final.pth") or time.monotonic()) - run.start,
        step_s=statistics.median(steps) if steps else 0.5,
        write_s={final: max(last - first, POLL_S) for final, first, last in run.temporaries.values()
                 if final.endswith(".pth")},
    )
    return os.path.join(output_dir, "model_final.pth"), reference


def save_names(max_iter, period):
    """(iteration, checkpoint file name) of every save ResumableCheckpointHook makes."""
    saves = [(i, f"model_{i:07d}.pth") for i in range(max_iter - 1) if (i + 1) % period == 0]
    return saves + [(max_iter - 1, "model_final.pth")]


def _trigger(kill, rng, reference, max_iter, saves):
    """A function run -> the moment to kill it, or None while the kill's anchor has not been seen. The anchor is
    drawn among the moments the run still has ahead once its start iteration is logged: for ``step``, the start of
    training (-1) or an iteration's log line; for ``save``, a checkpoint's temporary file appearing."""
    u_anchor, u_delay = rng.random(), rng.random()
    if kill.kind == "anytime":  # up to the final save: a kill after it rarely lands before the run exits
        kill.after_s = u_delay * reference.final_save_s
        return lambda run: run.start + kill.after_s

    def trigger(run):
        if run.start_iteration is None:
            return None
        if not kill.target:
            if kill.kind == "step":
                anchors = [-1] + list(range(run.start_iteration, max_iter - 1))
                kill.target = f"iter {anchors[int(u_anchor * len(anchors))]}"
                kill.after_s = u_delay * reference.step_s
            else:
                ahead = [name for iteration, name in saves if iteration >= run.start_iteration]
                kill.target = ahead[int(u_anchor * len(ahead))]
                kill.after_s = u_delay * reference.write_s.get(kill.target, 0.05)
        if kill.kind == "step":
            iteration = int(kill.target.split()[1])
            seen = run.iterations.get(iteration) if iteration >= 0 else run.started_at
        else:
            seen = run.first_write(kill.target)
        return None if seen is None else seen + kill.after_s

    return trigger


def _where(run, temporaries):
    last = run.last_iteration()
    at = "start-up" if run.start_iteration is None else (
        f"after iter {last}" if last is not None else f"training from iter {run.start_iteration}")
    return at + (f", writing {', '.join(sorted(temporaries))}" if temporaries else "")


def _bytes(tensor):
    # torch.equal compares values: -0.0 would equal 0.0, and NaN would differ from itself
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def checkpoint_differences(expected, actual, path=""):
    """Paths (``model.w``, ``optimizer.state.0.exp_avg``) where two loaded checkpoints differ; tensors must match
    bit for bit, in dtype and shape."""
    if isinstance(expected, torch.Tensor) or isinstance(actual, torch.Tensor):
        same = (isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor)
                and expected.dtype == actual.dtype and expected.shape == actual.shape
                and torch.equal(_bytes(expected), _bytes(actual)))
        return [] if same else [path]
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(expected) != set(actual):
            return [f"{path} keys"]
        return [d for key in expected
                for d in checkpoint_differences(expected[key], actual[key], f"{path}.{key}".lstrip("."))]
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        if len(expected) != len(actual):
            return [f"{path} length"]
        return [d for i, (a, b) in enumerate(zip(expected, actual))
                for d in checkpoint_differences(a, b, f"{path}.{i}")]
    return [] if expected == actual else [path]


def check_output(output_dir, expected):
    """Problems with a finished run's folder: its final checkpoint against ``expected`` (a loaded checkpoint), a
    temporary file left, a checkpoint that cannot be read, a ``last_checkpoint`` not naming the final one."""
    problems = []
    names = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
    left = [name for name in names if TEMPORARY_FILE.match(name)]
    if left:
        problems.append(f"temporary files left: {', '.join(left)}")
    for name in names:
        if name.endswith(".pth"):
            try:
                content = read_weights_file(os.path.join(output_dir, name)).content
            except ValueError as error:
                problems.append(f"torn checkpoint: {error}")
                continue
            if name == "model_final.pth":
                differing = checkpoint_differences(expected, content)
                if differing:
                    more = f", ... ({len(differing) - 3} more)" if len(differing) > 3 else ""
                    shown = ", ".join(differing[:3]) + more
                    problems.append(f"final checkpoint differs from the uninterrupted run's in {len(differing)} "
                                    f"entries ({shown})")
    if "model_final.pth" not in names:
        problems.append("no model_final.pth")
    named, problem = read_checkpoint_tag(output_dir)
    if problem is not None or (named is not None and named != "model_final.pth"):
        problems.append(problem or f"last_checkpoint names {named!r}, not model_final.pth")
    return problems


def _record_resume(trial, run, log_path, log_offset):
    """Notes where a ``--resume`` run started and what its log says it cleaned up or skipped."""
    with open(log_path, errors="replace") as f:
        f.seek(log_offset)
        text = f.read()
    if run.start_iteration is not None:
        trial.resumed_at.append(run.start_iteration)
    trial.removed_temporary_files += sum(int(m) for m in re.findall(r"Removed (\d+) temporary file", text))
    trial.fell_back += len(re.findall(r"the newest readable checkpoint, instead of", text))


def run_trial(command, index, folder, reference, expected, max_iter, saves, seed, max_kills):
    """Trains ``command`` in ``folder``/trial_<index>, killing 1..``max_kills`` runs at moments drawn from
    (``seed``, ``index``), then resumes without a kill; returns the trial's record with its problems (none when the
    final checkpoint equals ``expected`` and the folder is clean). ``saves``: :func:`save_names` of the run."""
    rng = random.Random(f"{seed}/{index}")
    trial = Trial(index)
    start = time.monotonic()
    output_dir = os.path.join(folder, f"trial_{index:02d}")
    log_path = os.path.join(folder, f"trial_{index:02d}.log")
    kinds = [rng.choice(KINDS) for _ in range(rng.randint(1, max_kills))]
    for number in range(len(kinds) + 1):
        kill = Kill(kinds[number]) if number < len(kinds) else None
        offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        run = command.start(output_dir, log_path, resume=number > 0)
        try:
            killed = run.wait(_trigger(kill, rng, reference, max_iter, saves) if kill else None)
            writing = [TEMPORARY_FILE.match(name).group(1) for name in set(run.temporary_files()) - run.left_before
                       ] if killed else []
        finally:
            run.close()
        if number > 0:
            _record_resume(trial, run, log_path, offset)
        if kill is not None:
            kill.landed = _where(run, writing) if killed else "missed: the run finished first"
            kill.mid_write = any(name.endswith(".pth") for name in writing)
            trial.kills.append(kill)
        if killed:
            continue
        error = last_error(log_path)
        # a kill after the final checkpoint leaves a finished run: --resume must say so
        finished_before = number > 0 and run.process.returncode == 2 and error.startswith("error: nothing to resume in")
        trial.finished_before_kill = finished_before
        if run.process.returncode != 0 and not finished_before:
            trial.problems.append(f"run {number + 1} exited {run.process.returncode}: {error}")
        break
    if not trial.problems:
        trial.problems += check_output(output_dir, expected)
    trial.seconds = time.monotonic() - start
    return trial


def describe_trial(trial):
    """One line: the kills and where they landed, the resumes, the verdict."""
    kills = "; ".join(
        f"{k.kind}{' ' + k.target if k.target else ''} +{k.after_s:.2f}s -> {k.landed}" for k in trial.kills)
    resumes = [f"resumed at {trial.resumed_at}"] if trial.resumed_at else []
    if trial.finished_before_kill:
        resumes.append("--resume: nothing to resume (killed after the final checkpoint)")
    resumed = ", ".join(resumes) or "no resume"
    extra = f", removed {trial.removed_temporary_files} temporary file(s)" if trial.removed_temporary_files else ""
    extra += f", fell back {trial.fell_back}x" if trial.fell_back else ""
    verdict = "OK" if trial.ok else "FAIL: " + "; ".join(trial.problems)
    return f"trial {trial.index:2d} [{trial.seconds:5.1f}s] {kills} | {resumed}{extra} | {verdict}"


def summarize(trials, seconds):
    """The drill's counts: trials, failures, kills that landed (and during a checkpoint write), kills planned after
    the run had finished, trials whose resume removed temporary files."""
    kills = [k for t in trials for k in t.kills]
    return {
        "trials": len(trials),
        "failures": sum(not t.ok for t in trials),
        "kills": sum(not k.landed.startswith("missed") for k in kills),
        "kills_mid_checkpoint_write": sum(k.mid_write for k in kills),
        "missed": sum(k.landed.startswith("missed") for k in kills),
        "resumes_that_removed_temporary_files": sum(t.removed_temporary_files > 0 for t in trials),
        "seconds": round(seconds, 1),
    }
