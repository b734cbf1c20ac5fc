#!/usr/bin/env python
"""What scoring the token selection (``train.selection_quality``) adds to an evaluation, for measuring only.

Each round evaluates the config's test set twice, interleaved image by image (so a busy spell of the machine hits
both alike): the model plus the config's evaluator, and the model returning its token selection plus the evaluator
plus :class:`SelectionQualityEvaluator`, then both evaluators' ``evaluate``. Data loading is done once up front and
left out, which makes the ratio an upper bound. Prints the seconds per round and the median per-round ratio.

``--clock cpu`` times this process's CPU time instead of the wall clock: on a machine other jobs share, wall-clock
rounds vary several-fold, CPU time little (with ``--threads 1``: no thread waits for another that is descheduled).

    .venv/bin/python scripts/selection_quality_cost.py configs/focus_detr_r18_trees.py \\
        output/main_job/model_final.pth [--rounds 7] [--threads 1 --clock cpu]
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import time

import torch
from detectron2.config import instantiate

from focus_detr.analysis.selection_quality_evaluator import SelectionQualityEvaluator, TokenSelectionOutputs
from focus_detr.analysis.timing import median_ratio
from focus_detr.checkpoint.safe_load import missing_checkpoint_error
from focus_detr.engine import load_config
from focus_detr.engine.arguments import positive_int
from focus_detr.engine.checkpoint import AtomicDetectionCheckpointer
from focus_detr.engine.cli import run_reporting_errors
from focus_detr.engine.config import _dataset_names_in
from focus_detr.engine.runner import build_model


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def _timed(function, *args):
    start = clock()
    function(*args)
    return clock() - start


def one_round(model, batches, cfg, swap):
    """Seconds of one evaluation without and with the selection metrics, interleaved per image."""
    plain = instantiate(cfg.dataloader.evaluator)
    scored = [instantiate(cfg.dataloader.evaluator), SelectionQualityEvaluator(_dataset_names_in(cfg.dataloader.test))]
    wrapped = TokenSelectionOutputs(model)
    seconds = {"without": 0.0, "with": 0.0}

    def without(batch):
        plain.process(batch, model(batch))

    def with_metrics(batch):
        outputs = wrapped(batch)
        for evaluator in scored:
            evaluator.process(batch, outputs)

    for evaluator in (plain, *scored):
        evaluator.reset()
    for index, batch in enumerate(batches):
        runs = [("without", without), ("with", with_metrics)]
        for name, run in runs[::-1] if (index + swap) % 2 else runs:
            seconds[name] += _timed(run, batch)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        seconds["without"] += _timed(plain.evaluate)
        seconds["with"] += sum(_timed(evaluator.evaluate) for evaluator in scored)
    return seconds


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config_file")
    parser.add_argument("checkpoint")
    parser.add_argument("--rounds", type=positive_int, default=7)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    return parser.parse_args(argv)


def main(argv=None):
    global clock
    args = parse_args(argv)
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, config_file, checkpoint = args.rounds, args.config_file, args.checkpoint
    logging.disable(logging.INFO)  # the evaluators' own tables: only the timing here
    cfg = load_config(config_file, ["train.output_dir="])
    if "://" not in checkpoint and not os.path.isfile(checkpoint):  # before the model and the test set are loaded
        raise missing_checkpoint_error(checkpoint)
    model = build_model(cfg, "cpu").eval()
    AtomicDetectionCheckpointer(model).load(checkpoint)
    batches = list(instantiate(cfg.dataloader.test))
    results = []
    with torch.no_grad():
        one_round(model, batches, cfg, 0)  # warm-up
        for index in range(rounds):
            results.append(one_round(model, batches, cfg, index))
            seconds = results[-1]
            print(f"round {index}: without {seconds['without']:.2f} s, with {seconds['with']:.2f} s", flush=True)
    ratio = median_ratio([r["with"] for r in results], [r["without"] for r in results])
    median_without = statistics.median(r["without"] for r in results)
    print(
        f"median ratio with / without: {ratio:.4f} ({rounds} rounds, {args.clock} clock, {torch.get_num_threads()} "
        f"threads; median evaluation without: {median_without:.2f} s)"
    )


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
