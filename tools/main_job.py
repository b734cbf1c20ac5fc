#!/usr/bin/env python
"""The README's first command (``make demo``): train the small Focus-DETR on the embedded tree-crown data on this
CPU, evaluate COCO AP on ``trees_val`` next to a trivial baseline, draw detections, token pictures and the training
curves, and print where everything is.

    python tools/main_job.py                      # ~8-10 minutes on 2 idle CPU cores
    python tools/main_job.py --output output/mine # a folder of your choice (an earlier run there is refused)
    python tools/main_job.py --output output/mine --resume  # finish an interrupted job there
    python tools/main_job.py train.max_iter=1200  # any config override

Stopped by Ctrl-C (or SIGTERM), the job ends with one line naming the command that finishes it: the same command with
``--output FOLDER --resume``. ``--resume`` continues training from the folder's last checkpoint, to the length the
job was started with unless ``train.max_iter`` is given; when training there is already complete (its last
checkpoint is at ``train.max_iter``), it goes on with what is left: the evaluation, the
pictures, the curves and the summary. A job whose training is complete and whose summary is written is finished:
``--resume`` refuses it (raise ``train.max_iter`` to train it longer).

Without ``--output``, a new job goes to ``output/main_job``, or ``output/main_job-2``, ``-3``, ... when that one
holds a run; ``--resume`` picks the one of those folders whose job is unfinished (no ``main_job_summary.json``) and
not running, and refuses, naming them, when there are none or several (then give ``--output``).
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import contextlib
import importlib.util
import os
import shlex
import signal
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")
DEFAULT_OUTPUT = os.path.join("output", "main_job")
SUMMARY = "main_job_summary.json"


def _load_script(relative_path, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _count(least):
    """An argparse type: a whole number of at least ``least``, else argparse's one-line error naming the option."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


def _parser():
    from focus_detr.engine.arguments import add_overrides_argument

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument(
        "--output", default=None, metavar="DIR",
        help=f"default: {DEFAULT_OUTPUT}, or {DEFAULT_OUTPUT}-2, -3, ... when it holds an earlier or running job "
        "(with --resume: the one of them whose job is unfinished)",
    )
    parser.add_argument("--resume", action="store_true",
                        help="finish the job in --output: continue its training from the last checkpoint, then "
                        "evaluate, draw and summarise (training already complete: only those)")
    parser.add_argument("--demo-images", type=_count(1), default=2,
                        help="validation images to draw (at least 1; the first ones of the set)")
    parser.add_argument("--threads", type=_count(0), default=0, help="CPU threads (0: every core this process may use)")
    add_overrides_argument(parser)
    return parser


def parse_args(argv=None):
    from focus_detr.engine.arguments import parse_args_with_overrides

    return parse_args_with_overrides(_parser(), argv)


def _invocation():
    """How this script was started: the interpreter with its options and the script (``sys.orig_argv`` up to the
    script), or this interpreter and this file when the job runs inside another program (tests)."""
    argv = list(getattr(sys, "orig_argv", []))
    script_at = len(argv) - len(sys.argv)
    if sys.argv and script_at >= 0 and os.path.abspath(sys.argv[0]) == os.path.abspath(__file__):
        return argv[: script_at + 1]
    return [sys.executable, os.path.abspath(__file__)]


def resume_command(args):
    """The shell command that finishes the job of ``args`` (its folder named, whatever picked it): the way this
    script was started, with ``--output FOLDER --resume``, the options given and the config overrides."""
    defaults = _parser()
    argv = _invocation()
    if args.config_file != defaults.get_default("config_file"):
        argv += ["--config-file", args.config_file]
    argv += ["--output", args.output, "--resume"]
    for option, key in (("--demo-images", "demo_images"), ("--threads", "threads")):
        if getattr(args, key) != defaults.get_default(key):
            argv += [option, str(getattr(args, key))]
    return shlex.join(argv + list(args.opts))


def _dataset_name(names):
    return names if isinstance(names, str) else names[0]


def _complete_training(point, max_iter):
    """The checkpoint of the folder's resume point ``point`` (:func:`focus_detr.engine.resume.resume_point`) when it
    holds a run trained to ``max_iter``, else None (no checkpoint, an unreadable one: training resumes and sorts that
    out)."""
    return point.checkpoint if point is not None and point.next_iteration >= max_iter else None


def _job_length(point, args):
    """For ``--resume`` without a ``train.max_iter`` override: the override of the length the job was started with,
    from its resume point ``point``. The config's own length had taken its place, so a finished job of 4 iterations
    trained on to 900 (and lost its summary), and an interrupted one started with train.max_iter=1200 stopped at 900."""
    if not args.resume or any(override.split("=", 1)[0] == "train.max_iter" for override in args.opts):
        return []
    if point is None or point.max_iter is None:
        return []
    print(f"[main job] --resume: the job's length, train.max_iter={point.max_iter} (give train.max_iter to train "
          "it longer)", flush=True)
    return [f"train.max_iter={point.max_iter}"]


class JobInterrupted(KeyboardInterrupt):
    """The job stopped on a signal outside training's own stop (which says how to resume itself): ``str()`` is the
    line to show, ``exit_status`` 128 + the signal number."""

    def __init__(self, message, signal_number):
        self.signal_number = signal_number
        self.exit_status = 128 + signal_number
        super().__init__(message)


def _signal_name(interrupt):
    return signal.Signals(getattr(interrupt, "signal_number", None) or signal.SIGINT).name


def main(args):
    """The whole job holds the output folder (one run at a time in it; ``args.output_claim``, which the training
    checks at each save); without --resume, a folder given with --output that holds an earlier run's checkpoints is
    refused rather than overwritten."""
    from focus_detr.engine import claim_output_dir
    from focus_detr.engine.job_folders import claimed_new_folder, unfinished_job

    with contextlib.ExitStack() as held:
        if args.output is None and not args.resume:
            args.output, args.output_claim = held.enter_context(claimed_new_folder(DEFAULT_OUTPUT))
            if args.output != DEFAULT_OUTPUT:
                print(f"[main job] {DEFAULT_OUTPUT} holds an earlier or running job: this one goes to {args.output}",
                      flush=True)
        else:
            if args.output is None:
                args.output = unfinished_job(DEFAULT_OUTPUT, SUMMARY)
                print(f"[main job] resuming the unfinished job in {args.output}", flush=True)
            args.output_claim = held.enter_context(claim_output_dir(os.path.abspath(args.output), key="--output",
                                                                    fresh_training=not args.resume))
        return _run_job(args)


def _run_job(args):
    """The job's steps; a Ctrl-C / SIGTERM in any of them ends with one line naming :func:`resume_command`."""
    from focus_detr.engine.interrupt import TrainingFinishedInterrupted, TrainingInterrupted

    command = resume_command(args)
    progress = {"stage": "after its training", "trained": False}
    try:
        return _steps(args, command, progress)
    except TrainingInterrupted:  # stopped in training: its line names the checkpoint and ``command``
        raise
    except TrainingFinishedInterrupted as interrupt:  # its line would name train_net's --eval-only, not this job
        raise JobInterrupted(_finish_line(args, interrupt, "at the end of its training", command),
                             interrupt.signal_number) from None
    except KeyboardInterrupt as interrupt:  # a plain Ctrl-C, or SIGTERM / SIGHUP (SignalInterrupt)
        number = getattr(interrupt, "signal_number", None) or signal.SIGINT
        if progress["trained"]:
            message = _finish_line(args, interrupt, progress["stage"], command)
        else:
            message = (f"main job stopped by {_signal_name(interrupt)} while setting up its training in "
                       f"{os.path.abspath(args.output)}; continue it with: {command}")
        raise JobInterrupted(message, number) from None


def _finish_line(args, interrupt, stage, command):
    return (f"training finished (checkpoint in {os.path.abspath(args.output)}); {_signal_name(interrupt)} stopped the "
            f"main job {stage}; finish the job (evaluation, pictures, summary) without retraining with: "
            f"{command}")


def cpu_threads(requested):
    """``requested``, or for 0 the cores this process may run on (taskset, a container's cpuset, a SLURM job): the
    machine's count oversubscribed a process given fewer."""
    if requested > 0:
        return requested
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)  # Linux only


def _steps(args, command, progress):
    from detectron2.data import DatasetCatalog

    from focus_detr.analysis.baseline import evaluate_grid_baseline
    from focus_detr.analysis.training_curves import plot_training_curves, read_metrics
    from focus_detr.engine import check_datasets_registered, load_config, write_json
    from focus_detr.engine.config import ConfigError
    from focus_detr.engine.resume import resume_point
    from focus_detr.engine.test_set import check_evaluator_settings

    torch.set_num_threads(cpu_threads(args.threads))
    output = os.path.abspath(args.output)
    summary_path = os.path.join(output, SUMMARY)
    point = resume_point(output) if args.resume else None  # its checkpoint, read once
    overrides = [f"train.output_dir={output}", *args.opts, *_job_length(point, args)]
    cfg = load_config(args.config_file, overrides)  # registers the tree data (or names the command that builds it)
    check_datasets_registered(cfg.dataloader)
    check_evaluator_settings(cfg, required_by="the main job, which evaluates its model,")  # before, not after training
    train_set = _dataset_name(cfg.dataloader.train.dataset.names)
    val_set = _dataset_name(cfg.dataloader.test.dataset.names)

    train_net = _load_script("train_net.py", "train_net")
    complete = _complete_training(point, cfg.train.max_iter)
    if complete is not None and os.path.isfile(summary_path):
        raise ConfigError(
            f"nothing to resume in {output}: its job is finished (training at train.max_iter {cfg.train.max_iter}, "
            f"summary {summary_path}); raise train.max_iter to train it longer, or start a new job without --resume"
        )
    train_minutes = None
    if complete is not None:
        print(f"[main job] training in {output} is complete ({complete}, train.max_iter {cfg.train.max_iter}): going "
              "on with the evaluation, pictures and summary", flush=True)
        final_checkpoint = complete
    else:
        if os.path.isfile(summary_path):  # a finished job trained longer: its summary no longer describes the model
            os.remove(summary_path)
        started = time.time()
        train_args = train_net.parse_args(
            ["--config-file", args.config_file] + (["--resume"] if args.resume else []) + overrides
        )
        train_args.resume_command = command  # names the folder, whatever picked it
        train_args.output_claim = getattr(args, "output_claim", None)
        print(f"[main job] training {args.config_file} for {cfg.train.max_iter} iterations on "
              f"{torch.get_num_threads()} CPU threads -> {output}", flush=True)
        train_net.main(train_args)
        train_minutes = (time.time() - started) / 60
        final_checkpoint = os.path.join(output, "model_final.pth")
    progress["trained"] = True

    progress["stage"] = "during its evaluation"
    eval_args = train_net.parse_args(
        ["--config-file", args.config_file, "--eval-only", *overrides, f"train.init_checkpoint={final_checkpoint}"]
    )
    model_metrics = train_net.main(eval_args).get("bbox", {})
    progress["stage"] = "during the baseline's evaluation"
    baseline_metrics, box_size = evaluate_grid_baseline(train_set, val_set, os.path.join(output, "baseline"))
    baseline_metrics = baseline_metrics.get("bbox", {})

    progress["stage"] = "while drawing the pictures"
    demo = _load_script(os.path.join("demo", "demo.py"), "focus_detr_demo")
    images = [record["file_name"] for record in DatasetCatalog.get(val_set)[: args.demo_images]]
    pictures_dir = os.path.join(output, "pictures")
    pictures = demo.main(demo.parse_args(
        ["--config-file", args.config_file, "--input", *images, "--output", pictures_dir, "--show-tokens",
         "--opts", *overrides, f"train.init_checkpoint={final_checkpoint}"]
    ))

    progress["stage"] = "while drawing the training curves"
    curves = plot_training_curves(read_metrics(os.path.join(output, "metrics.json")),
                                  os.path.join(output, "training_curves.png"))

    summary = {
        "config_file": args.config_file,
        "train_minutes": train_minutes,  # None: training was complete before this run (--resume)
        "resumed": bool(args.resume),
        "threads": torch.get_num_threads(),
        "val_dataset": val_set,
        "model": {k: model_metrics.get(k) for k in ("AP", "AP50", "AP75")},
        "grid_baseline": {k: baseline_metrics.get(k) for k in ("AP", "AP50", "AP75")},
        "baseline_box_size": box_size,
        "checkpoint": final_checkpoint,
        "pictures": pictures,
        "training_curves": curves,
    }
    progress["stage"] = "while writing the summary"
    # whole or not at all: a summary marks the job finished (--resume refuses it)
    write_json(summary_path, summary)

    def fmt(value):
        return "n/a" if value is None else f"{value:.1f}"

    if train_minutes is None:
        trained = "training completed by an earlier run"
    else:
        trained = f"{train_minutes:.1f} min of training{' in this run (resumed)' if args.resume else ''}"
    print("\n" + "=" * 78)
    print(f"Focus-DETR main job: {trained} on {summary['threads']} CPU threads")
    print(f"COCO AP on {val_set}:  model AP {fmt(model_metrics.get('AP'))}  AP50 {fmt(model_metrics.get('AP50'))}   |   "
          f"trivial grid baseline AP {fmt(baseline_metrics.get('AP'))}  AP50 {fmt(baseline_metrics.get('AP50'))}")
    print(f"checkpoint:          {final_checkpoint}")
    print(f"training log:        {os.path.join(output, 'log.txt')}  (metrics: metrics.json, TensorBoard: tensorboard --logdir {output})")
    print(f"evaluation:          {os.path.join(output, 'eval_results.json')}")
    print(f"training curves:     {curves}  (losses, learning rate, AP; again: python tools/plot_metrics.py {output})")
    print(f"pictures:            {pictures_dir}/  ({len(pictures)} PNG files: *_detections, *_foreground, *_tokens)")
    print(f"summary:             {summary_path}")
    print("=" * 78)
    return summary


if __name__ == "__main__":
    sys.path.insert(0, REPO_ROOT)
    from focus_detr.engine.cli import run_reporting_errors

    sys.exit(run_reporting_errors(main, parse_args()))
