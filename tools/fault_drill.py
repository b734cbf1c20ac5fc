#!/usr/bin/env python
"""Fault drill: kills training with SIGKILL at random moments (also in the middle of checkpoint writes), resumes it
with ``--resume`` until it finishes, and checks that the final checkpoint equals an uninterrupted run's bit for bit
(weights, optimizer, schedule, RNG and data-loader state) and that no torn or stale file is left behind.

Each run is ``train_net.py`` in its own process group (its data-loader worker dies with it, as in a crash), on the
tree config shortened by ``DRILL_OVERRIDES`` (8 iterations at 128 px, a checkpoint every 2, one data worker, no
evaluation); ``key=value`` pairs on this command line come after them. A trial kills 1..``--max-kills`` runs, each
at a moment drawn from ``--seed``:

- ``anytime``: a delay after launch, uniform up to when the uninterrupted run wrote its final checkpoint (start-up
  included);
- ``step``: a random part of a step after the log shows a random iteration of those the run still has to do;
- ``save``: a random part of the write time after the temporary file of a random checkpoint appears, so the kill
  lands while the checkpoint is being written (the file is checked for at the moment of the kill).

Then ``--resume`` runs without interruption; a kill after the final checkpoint leaves a finished run, for which
``--resume`` must say that there is nothing to resume. Prints one line per trial and a summary; exits 1 when a trial
fails. Runs take their timing from the machine, so kill moments vary between drills with the same seed; the moments
drawn, and where each kill landed, are printed and written to ``--json``.

Examples:
    python tools/fault_drill.py --trials 10
    python tools/fault_drill.py --trials 2 --max-kills 1 --output /tmp/drill --json /tmp/drill.json train.max_iter=4
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import torch

from focus_detr.checkpoint import read_weights_file
from focus_detr.engine import load_config
from focus_detr.engine.arguments import add_overrides_argument, parse_args_with_overrides
from focus_detr.engine.cli import run_reporting_errors

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREES_CONFIG = os.path.join("configs", "focus_detr_r18_trees.py")
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
_POLL_S = 0.002
_ITERATION_LINE = re.compile(rb"\biter: (\d+) ")
_START_LINE = re.compile(rb"Starting training from iteration (\d+)")
# atomic_write's temporary files: ".<final name>.<random>.tmp"
_TEMPORARY = re.compile(r"^\.(.+?)\.[^.]+\.tmp$")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=TREES_CONFIG, metavar="FILE",
                        help="default: the tree config (DRILL_OVERRIDES name its data pipeline)")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--max-kills", type=int, default=2, help="kills per trial: 1..N, drawn per trial")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    parser.add_argument("--output", metavar="DIR", help="new or empty folder for the runs (default: a temporary "
                        "folder, removed when every trial passed)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training processes")
    parser.add_argument("--run-timeout", type=float, default=300.0, metavar="S", help="per training process")
    parser.add_argument("--json", metavar="PATH", help="write the trials and the summary here")
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


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


class _Run:
    """A ``train_net.py`` process whose log and output folder are watched: iterations with the time they were first
    seen, the temporary files of checkpoint writes with the times they were present."""

    def __init__(self, argv, env, log_path, output_dir, timeout):
        self.output_dir = output_dir
        self.timeout = timeout
        self._log = open(log_path, "ab")
        self._reader = open(log_path, "rb")
        self._reader.seek(0, os.SEEK_END)
        self._text = b""
        self.left_before = set(self.temporary_files())  # by an earlier killed run; not this run's writes
        self.start = time.monotonic()
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                        start_new_session=True)
        self.start_iteration = self.started_at = None  # from the "Starting training" line, when it was seen
        self.iterations = {}  # iteration -> monotonic time its log line was seen
        self.temporaries = {}  # temporary file name -> [final file name, first seen, last seen]

    def temporary_files(self):
        try:
            return [entry.name for entry in os.scandir(self.output_dir) if _TEMPORARY.match(entry.name)]
        except FileNotFoundError:
            return []

    def poll(self):
        now = time.monotonic()
        self._text += self._reader.read()
        lines = self._text.split(b"\n")
        self._text = lines.pop()
        for line in lines:
            started = _START_LINE.search(line)
            if started:
                self.start_iteration, self.started_at = int(started.group(1)), now
            for match in _ITERATION_LINE.finditer(line):
                self.iterations.setdefault(int(match.group(1)), now)
        for name in self.temporary_files():
            self.temporaries.setdefault(name, [_TEMPORARY.match(name).group(1), now, now])[2] = now
        return now

    def first_write(self, final_name):
        """When a temporary file of ``final_name`` was first seen (None: not yet)."""
        seen = [first for final, first, _ in self.temporaries.values() if final == final_name]
        return min(seen) if seen else None

    def last_iteration(self):
        return max(self.iterations) if self.iterations else None

    def kill(self):
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def wait(self, trigger=None):
        """Polls until the process exits, or until ``trigger(self)`` returns a moment that has come (then the
        process group is killed). Returns True when killed."""
        kill_at = None
        while self.process.poll() is None:
            now = self.poll()
            if now - self.start > self.timeout:
                self.kill()
                raise TimeoutError(f"a training process ran past --run-timeout ({self.timeout:.0f} s)")
            if kill_at is None and trigger is not None:
                kill_at = trigger(self)
            if kill_at is not None and now >= kill_at:
                self.kill()
                return True
            time.sleep(_POLL_S)
        self.poll()
        return False

    def close(self):
        self._log.close()
        self._reader.close()


def _train_argv(args, output_dir, resume):
    argv = [sys.executable, "train_net.py", "--config-file", args.config_file]
    return argv + (["--resume"] if resume else []) + [*DRILL_OVERRIDES, *args.opts, f"train.output_dir={output_dir}"]


def _env(args):
    return dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")


def _last_error(log_path):
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1]


def run_reference(args, folder):
    """The uninterrupted run: its final checkpoint and its timings."""
    output_dir = os.path.join(folder, "reference")
    log_path = os.path.join(folder, "reference.log")
    run = _Run(_train_argv(args, output_dir, resume=False), _env(args), log_path, output_dir, args.run_timeout)
    try:
        run.wait()
    finally:
        run.close()
    if run.process.returncode != 0:
        raise ValueError(f"the uninterrupted run failed (exit {run.process.returncode}): {_last_error(log_path)}")
    seen = [run.iterations[i] for i in sorted(run.iterations)]
    steps = [b - a for a, b in zip(seen, seen[1:])]
    reference = Reference(
        total_s=time.monotonic() - run.start,
        final_save_s=(run.first_write("model_final.pth") or time.monotonic()) - run.start,
        step_s=statistics.median(steps) if steps else 0.5,
        write_s={final: max(last - first, _POLL_S) for final, first, last in run.temporaries.values()
                 if final.endswith(".pth")},
    )
    return os.path.join(output_dir, "model_final.pth"), reference


def _save_names(max_iter, period):
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


def _differences(expected, actual, path=""):
    """Paths where two checkpoints differ (tensors bit for bit)."""
    if isinstance(expected, torch.Tensor) or isinstance(actual, torch.Tensor):
        same = (isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor)
                and expected.dtype == actual.dtype and expected.shape == actual.shape and torch.equal(expected, actual))
        return [] if same else [path]
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(expected) != set(actual):
            return [f"{path} keys"]
        return [d for key in expected for d in _differences(expected[key], actual[key], f"{path}.{key}".lstrip("."))]
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        if len(expected) != len(actual):
            return [f"{path} length"]
        return [d for i, (a, b) in enumerate(zip(expected, actual)) for d in _differences(a, b, f"{path}.{i}")]
    return [] if expected == actual else [path]


def check_output(output_dir, expected):
    """Problems with a finished run's folder: its final checkpoint against ``expected`` (a loaded checkpoint), a
    temporary file left, a checkpoint that cannot be read, a ``last_checkpoint`` not naming the final one."""
    problems = []
    names = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
    left = [name for name in names if _TEMPORARY.match(name)]
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
                differing = _differences(expected, content)
                if differing:
                    shown = ", ".join(differing[:3]) + (f", ... ({len(differing) - 3} more)" if len(differing) > 3 else "")
                    problems.append(f"final checkpoint differs from the uninterrupted run's in {len(differing)} "
                                    f"entries ({shown})")
    if "model_final.pth" not in names:
        problems.append("no model_final.pth")
    tag = os.path.join(output_dir, "last_checkpoint")
    if os.path.isfile(tag) and open(tag).read().strip() != "model_final.pth":
        problems.append(f"last_checkpoint names {open(tag).read().strip()!r}, not model_final.pth")
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


def run_trial(args, index, folder, reference, expected, max_iter, saves):
    """Trains in a fresh folder, killing 1..``args.max_kills`` runs, then resumes without a kill; returns the
    trial's record with its problems (none when the final checkpoint equals ``expected`` and the folder is clean)."""
    rng = random.Random(f"{args.seed}/{index}")
    trial = Trial(index)
    start = time.monotonic()
    output_dir = os.path.join(folder, f"trial_{index:02d}")
    log_path = os.path.join(folder, f"trial_{index:02d}.log")
    kinds = [rng.choice(KINDS) for _ in range(rng.randint(1, args.max_kills))]
    for number in range(len(kinds) + 1):
        kill = Kill(kinds[number]) if number < len(kinds) else None
        offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        run = _Run(_train_argv(args, output_dir, resume=number > 0), _env(args), log_path, output_dir, args.run_timeout)
        try:
            killed = run.wait(_trigger(kill, rng, reference, max_iter, saves) if kill else None)
            writing = [_TEMPORARY.match(name).group(1) for name in set(run.temporary_files()) - run.left_before
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
        error = _last_error(log_path)
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


def _describe(trial):
    kills = "; ".join(
        f"{k.kind}{' ' + k.target if k.target else ''} +{k.after_s:.2f}s -> {k.landed}" for k in trial.kills)
    resumes = [f"resumed at {trial.resumed_at}"] if trial.resumed_at else []
    if trial.finished_before_kill:
        resumes.append("--resume: nothing to resume (killed after the final checkpoint)")
    resumed = ", ".join(resumes) or "no resume"
    extra = (f", removed {trial.removed_temporary_files} temporary file(s)" if trial.removed_temporary_files else "") + (
        f", fell back {trial.fell_back}x" if trial.fell_back else "")
    verdict = "OK" if trial.ok else "FAIL: " + "; ".join(trial.problems)
    return f"trial {trial.index:2d} [{trial.seconds:5.1f}s] {kills} | {resumed}{extra} | {verdict}"


def _prepare_output(path):
    if path is None:
        return tempfile.mkdtemp(prefix="fault_drill_"), True
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"--output {path} must be a new or empty folder (the drill writes a run folder per trial)")
    os.makedirs(path, exist_ok=True)
    return path, False


def main(args) -> int:
    if args.trials < 1 or args.max_kills < 1:
        raise ValueError(f"--trials and --max-kills must be >= 1 (got {args.trials}, {args.max_kills})")
    cfg = load_config(os.path.join(REPO_ROOT, args.config_file), [*DRILL_OVERRIDES, *args.opts])
    if cfg.train.seed < 0:
        raise ValueError("the drill compares runs bit for bit: set a fixed train.seed (>= 0)")
    max_iter, period = int(cfg.train.max_iter), int(cfg.train.checkpointer.period)
    folder, temporary = _prepare_output(args.output)
    started = time.monotonic()
    print(f"fault drill in {folder}: {args.config_file}, {max_iter} iterations, checkpoint every {period}", flush=True)
    final, reference = run_reference(args, folder)
    expected = read_weights_file(final).content
    print(f"uninterrupted run: {reference.total_s:.1f}s, {reference.step_s:.2f}s per step, checkpoint writes "
          + ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in sorted(reference.write_s.items())), flush=True)
    saves = _save_names(max_iter, period)
    trials = []
    for index in range(args.trials):
        trials.append(run_trial(args, index, folder, reference, expected, max_iter, saves))
        print(_describe(trials[-1]), flush=True)
    kills = [k for t in trials for k in t.kills]
    summary = {
        "trials": len(trials),
        "failures": sum(not t.ok for t in trials),
        "kills": sum(not k.landed.startswith("missed") for k in kills),
        "kills_mid_checkpoint_write": sum(k.mid_write for k in kills),
        "missed": sum(k.landed.startswith("missed") for k in kills),
        "resumes_that_removed_temporary_files": sum(t.removed_temporary_files > 0 for t in trials),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"fault drill: {summary['trials']} trials, {summary['failures']} failures; {summary['kills']} kills "
          f"({summary['kills_mid_checkpoint_write']} during a checkpoint write), {summary['missed']} planned kills "
          f"came after the run finished; {summary['seconds']:.0f}s")
    if args.json:
        report = {"config": args.config_file, "overrides": [*DRILL_OVERRIDES, *args.opts], "seed": args.seed,
                  "reference": asdict(reference), "summary": summary,
                  "trials": [dict(asdict(t), ok=t.ok) for t in trials]}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if temporary and not summary["failures"]:
        shutil.rmtree(folder)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, parse_args()))
