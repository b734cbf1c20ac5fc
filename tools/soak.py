#!/usr/bin/env python
"""Soak: trains the tree config for 1,000 iterations (with an evaluation every 200 and a checkpoint every 100, at a
reduced input size: ``SOAK_OVERRIDES`` in focus_detr/engine/soak.py) while sampling, every ``--sample-every``
seconds, the training process's resident memory (VmRSS), its data-loader workers' (summed), and the open file
handles and threads of all of them, from Linux's /proc. ``key=value`` pairs on this command line come after the
soak's overrides.

After the warm-up (up to the first evaluation, or the first 10% of the iterations without one) the last tenth of
the samples is compared with the first tenth: resident memory may grow by at most ``--max-rss-growth`` percent
(medians), open file handles and threads not at all (``--max-fd-growth`` / ``--max-thread-growth``). Prints the
samples as a table (about 11 rows spread over the run) and the verdict; ``--json`` writes every sample. Exits 1 when
a limit is exceeded or the run fails.

Examples:
    python tools/soak.py --json soak.json
    python tools/soak.py --output /tmp/soak --sample-every 0.5 train.max_iter=200 train.eval_period=50
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import os
import shutil
import sys
from dataclasses import asdict

from focus_detr.engine.config_files import load_config_for_tool
from focus_detr.engine.arguments import (add_overrides_argument, non_negative_float, parse_args_with_overrides,
                                         positive_float, positive_int)
from focus_detr.engine.checkpoint import write_json
from focus_detr.engine.cli import run_reporting_errors
from focus_detr.engine.settings import check_output_file
from focus_detr.engine.soak import SOAK_OVERRIDES, Limits, SampleTable, run_soak, soak_verdict, warmup_iterations
from focus_detr.engine.training_process import (
    TrainingCommand,
    last_error,
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
                        help="default: the tree config (SOAK_OVERRIDES name its data pipeline)")
    parser.add_argument("--output", type=user_path, metavar="DIR",
                        help="new or empty folder for the run (default: a temporary folder, removed when "
                        "the soak passes)")
    parser.add_argument("--sample-every", type=positive_float, default=2.0, metavar="S",
                        help="seconds between samples")
    parser.add_argument("--max-rss-growth", type=non_negative_float, default=5.0, metavar="PERCENT")
    parser.add_argument("--max-fd-growth", type=int, default=0, metavar="N")
    parser.add_argument("--max-thread-growth", type=int, default=0, metavar="N")
    parser.add_argument("--threads", type=positive_int, default=1, help="OMP_NUM_THREADS of the training process")
    parser.add_argument("--run-timeout", type=positive_float, default=3600.0, metavar="S")
    parser.add_argument("--json", type=user_path, metavar="PATH", help="write the samples and the verdict here")
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


def _print_lines(lines):
    for line in lines:
        print(line, flush=True)


def main(args) -> int:
    if min(args.max_fd_growth, args.max_thread_growth) < 0:
        raise ValueError("the --max-*-growth limits must be >= 0")
    if args.json:
        # now, not after the run's minutes
        check_output_file(args.json, "--json", "report.json", inputs={"--config-file": args.config_file})
    overrides = [*SOAK_OVERRIDES, *args.opts]
    cfg = load_config_for_tool(args.config_file, SOAK_OVERRIDES, args.opts, "tools/soak.py")
    max_iter = int(cfg.train.max_iter)
    eval_period = int(cfg.train.eval_period) if cfg.dataloader.get("evaluator", None) is not None else 0
    warmup = warmup_iterations(max_iter, eval_period)
    limits = Limits(args.max_rss_growth / 100, args.max_fd_growth, args.max_thread_growth)
    folder, temporary = prepare_runs_folder(args.output, "soak_")
    print(f"soak in {folder}: {args.config_file}, {max_iter} iterations, evaluation every {eval_period or '-'}, "
          f"checkpoint every {cfg.train.checkpointer.period}; warm-up {warmup} iterations; a sample every "
          f"{args.sample_every:g} s", flush=True)
    command = TrainingCommand(args.config_file, overrides, TRAIN_NET, args.threads, args.run_timeout)
    with removed_on_error(folder, temporary):
        run, verdict = _soak(args, command, folder, max_iter, warmup, limits)
    if temporary and verdict.ok:  # a failed soak's folder is kept to look into
        shutil.rmtree(folder)
    if args.json:
        report = {"config": args.config_file, "overrides": overrides, "limits": asdict(limits),
                  "sample_every_s": args.sample_every, "max_iter": max_iter, "eval_period": eval_period,
                  "run": {"exit_status": run.exit_status, "iterations": run.iterations,
                          "seconds": round(run.seconds, 1)},
                  "verdict": dict(asdict(verdict), ok=verdict.ok), "samples": [asdict(s) for s in run.samples]}
        write_json(args.json, report)
    return 0 if verdict.ok else 1


def _soak(args, command, folder, max_iter, warmup, limits):
    """Runs the soak in ``folder``, printing the table and the verdict; returns the run and the verdict."""
    log_path = os.path.join(folder, "train.log")
    table = SampleTable(max_iter, warmup)
    print(SampleTable.HEADER, flush=True)
    run = run_soak(command, os.path.join(folder, "run"), log_path, args.sample_every,
                   echo=lambda sample: _print_lines(table.add(sample)))
    _print_lines(table.close())
    verdict = soak_verdict(run.samples, warmup, max_iter, limits)
    if run.exit_status != 0:
        verdict.problems.insert(0, f"the training run exited {run.exit_status}: {last_error(log_path)}")
    elif run.iterations < max_iter:
        verdict.problems.insert(0, f"the training run logged {run.iterations} of {max_iter} iterations")
    for name, measure in verdict.measures.items():
        if name.endswith("rss_mib"):
            print(f"{name}: {measure['baseline']:.1f} after warm-up -> {measure['final']:.1f} at the end "
                  f"({measure['growth']:+.1%}, limit {measure['limit']:+.0%})")
        else:
            print(f"{name}: {measure['baseline']:g} after warm-up -> {measure['final']:g} at the end "
                  f"({measure['growth']:+g}, limit {measure['limit']:+d})")
    print(f"soak: {'PASS' if verdict.ok else 'FAIL: ' + '; '.join(verdict.problems)}; {run.iterations} iterations "
          f"in {run.seconds:.0f} s, {len(run.samples)} samples (windows of {verdict.window})")
    return run, verdict


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, parse_args()))
