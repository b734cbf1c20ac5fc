#!/usr/bin/env python
"""Fault drill: kills training with SIGKILL at random moments (also in the middle of checkpoint writes), resumes it
with ``--resume`` until it finishes, and checks that the final checkpoint equals an uninterrupted run's bit for bit
(weights, optimizer, schedule, RNG and data-loader state) and that no torn or stale file is left behind.

Each run is ``train_net.py`` in its own process group (its data-loader worker dies with it, as in a crash), on the
tree config shortened by ``DRILL_OVERRIDES`` (focus_detr/engine/fault_drill.py: 8 iterations at 128 px, a checkpoint
every 2, one data worker, no evaluation); ``key=value`` pairs on this command line come after them. A trial kills
1..``--max-kills`` runs, each at a moment drawn from ``--seed``: ``anytime`` after launch, a random part of a
``step``, or during a checkpoint ``save`` (the module's docstring says how each is drawn). Then ``--resume`` runs
without interruption; a kill after the final checkpoint leaves a finished run, for which ``--resume`` must say that
there is nothing to resume. Prints one line per trial and a summary; exits 1 when a trial fails. Runs take their
timing from the machine, so kill moments vary between drills with the same seed; the moments drawn, and where each
kill landed, are printed and written to ``--json``.

Examples:
    python tools/fault_drill.py --trials 10
    python tools/fault_drill.py --trials 2 --max-kills 1 --output /tmp/drill --json /tmp/drill.json train.max_iter=4
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import os
import shutil
import sys
import time
from dataclasses import asdict

from focus_detr.checkpoint import read_weights_file
from focus_detr.engine.config_files import load_config_for_tool
from focus_detr.engine.arguments import add_overrides_argument, parse_args_with_overrides, positive_float, positive_int
from focus_detr.engine.checkpoint import write_json
from focus_detr.engine.cli import run_reporting_errors
from focus_detr.engine.settings import check_output_file
from focus_detr.engine.fault_drill import (
    DRILL_OVERRIDES,
    describe_trial,
    run_reference,
    run_trial,
    save_names,
    summarize,
)
from focus_detr.engine.training_process import (
    TrainingCommand,
    prepare_runs_folder,
    removed_on_error,
    user_path,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREES_CONFIG = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")
TRAIN_NET = os.path.join(REPO_ROOT, "train_net.py")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=TREES_CONFIG, type=user_path, metavar="FILE",
                        help="default: the tree config (DRILL_OVERRIDES name its data pipeline)")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--max-kills", type=int, default=2, help="kills per trial: 1..N, drawn per trial")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    parser.add_argument("--output", type=user_path, metavar="DIR",
                        help="new or empty folder for the runs (default: a temporary folder, removed when "
                        "every trial passed)")
    parser.add_argument("--threads", type=positive_int, default=1, help="OMP_NUM_THREADS of the training processes")
    parser.add_argument("--run-timeout", type=positive_float, default=300.0, metavar="S", help="per training process")
    parser.add_argument("--json", type=user_path, metavar="PATH", help="write the trials and the summary here")
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


def main(args) -> int:
    if args.trials < 1 or args.max_kills < 1:
        raise ValueError(f"--trials and --max-kills must be >= 1 (got {args.trials}, {args.max_kills})")
    if args.json:
        # now, not after the run's minutes
        check_output_file(args.json, "--json", "report.json", inputs={"--config-file": args.config_file})
    overrides = [*DRILL_OVERRIDES, *args.opts]
    cfg = load_config_for_tool(args.config_file, DRILL_OVERRIDES, args.opts, "tools/fault_drill.py")
    if cfg.train.seed < 0:
        raise ValueError("the drill compares runs bit for bit: set a fixed train.seed (>= 0)")
    max_iter, period = int(cfg.train.max_iter), int(cfg.train.checkpointer.period)
    command = TrainingCommand(args.config_file, overrides, TRAIN_NET, args.threads, args.run_timeout)
    folder, temporary = prepare_runs_folder(args.output, "fault_drill_")
    with removed_on_error(folder, temporary):
        reference, trials, summary = _drill(args, command, folder, max_iter, period)
    if temporary and not summary["failures"]:  # a failed drill's folder is kept to look into
        shutil.rmtree(folder)
    if args.json:
        report = {"config": args.config_file, "overrides": overrides, "seed": args.seed,
                  "reference": asdict(reference), "summary": summary,
                  "trials": [dict(asdict(t), ok=t.ok) for t in trials]}
        write_json(args.json, report)
    return 1 if summary["failures"] else 0


def _drill(args, command, folder, max_iter, period):
    """The uninterrupted run and the trials in ``folder``, each printed; returns the reference timings, the trials
    and their summary."""
    started = time.monotonic()
    print(f"fault drill in {folder}: {args.config_file}, {max_iter} iterations, checkpoint every {period}", flush=True)
    final, reference = run_reference(command, folder)
    expected = read_weights_file(final).content
    print(f"uninterrupted run: {reference.total_s:.1f}s, {reference.step_s:.2f}s per step, checkpoint writes "
          + ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in sorted(reference.write_s.items())), flush=True)
    saves = save_names(max_iter, period)
    trials = []
    for index in range(args.trials):
        trials.append(run_trial(command, index, folder, reference, expected, max_iter, saves, args.seed,
                                args.max_kills))
        print(describe_trial(trials[-1]), flush=True)
    summary = summarize(trials, time.monotonic() - started)
    print(f"fault drill: {summary['trials']} trials, {summary['failures']} failures; {summary['kills']} kills "
          f"({summary['kills_mid_checkpoint_write']} during a checkpoint write), {summary['missed']} planned kills "
          f"came after the run finished; {summary['seconds']:.0f}s")
    return reference, trials, summary


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, parse_args()))
