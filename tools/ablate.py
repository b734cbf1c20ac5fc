#!/usr/bin/env python
"""The paper's component ablations on your data: trains and evaluates each variant of one config, on the same data
and schedule, for several seeds, and reports whether each component's effect exceeds the spread across seeds.

Variants (each a set of config overrides, printed at the start so any of them can be trained by hand):
  full, no_top_down, no_cascade, no_fine_grained_attention, foreground_only_scoring, random_selection, dense

Writes into --output:
  <variant>/seed<k>/   each run: train_net.py's output (checkpoints, log.txt, metrics.json), eval/ (eval_results.json)
  ablation.csv         one row per run: AP, AP50, AP75, APs/m/l, GFLOPs, latency (median of interleaved rounds),
                       training minutes, the last encoder layer's token-selection quality (recall, small, precision)
  ablation.md          per variant: mean and seed range, difference to full over the seeds both have, whether it
                       exceeds the seed spread
  ablation.png         AP against GFLOPs and against latency, seed range as error bars

Runs go seed by seed (every variant with the first seed, then the second, ...). Run the same command again to
resume: finished runs are skipped, an interrupted training continues from its last checkpoint (Ctrl-C or SIGTERM
stops the current training after a checkpoint). A run folder holding a run started with other settings (config file,
the contents of it or of a file it imports, overrides, seed, CPU thread count) is refused before anything runs: give
a new --output, or delete that run folder. The same command started twice at once shares the runs between the two
(each takes the next run nobody is running; e.g. with --threads 1 on a 2-core machine). GFLOPs and latency (in the
evaluation's precision, train.inference_amp) are measured afresh over every finished run at the end of each
invocation. Overrides given after the options apply to every variant; one that sets a key a variant sets itself is
refused (it would undo that variant).

Example (the main job's schedule, 2 seeds; ~10 minutes per run on 2 CPU cores):
    python tools/ablate.py --config-file configs/focus_detr_r18_trees.py --output output/ablation --seeds 2
    python tools/ablate.py --config-file configs/focus_detr_r18_trees.py --output output/ablation --print-overrides
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import os
import signal
import subprocess
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO_ROOT, "train_net.py")
# set per run by this tool: a user override of them would make the runs collide or lose their seed
RESERVED_KEYS = ("train.output_dir", "train.seed", "train.init_checkpoint")


def parse_args(argv=None):
    from focus_detr.analysis.ablation import VARIANTS
    from focus_detr.engine.arguments import add_overrides_argument, parse_args_with_overrides

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="NAME", help="default: all")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per variant: 1 .. N (default 2)")
    parser.add_argument("--print-overrides", action="store_true", help="print each variant's overrides and stop")
    parser.add_argument("--flop-images", type=int, default=5, help="test images GFLOPs are averaged over")
    parser.add_argument("--latency-rounds", type=int, default=7, help="interleaved timing rounds (>= 5)")
    parser.add_argument("--device", default="auto", help="device of the latency measurement")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of every training, evaluation and timing (0: torch's default, all cores); "
                        "1 keeps runs fast on a machine busy with other work")
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


def _run_logged(command, log_path, child_env=None):
    """Runs ``command`` with its output appended to ``log_path``; returns its exit status. The child works in this
    process's working directory (a relative path in an override means what it means here) and has its own process
    group, so a stop reaches it once, forwarded from here as SIGTERM: a training child then saves a checkpoint at its
    current iteration and exits, and this waits for that before stopping."""
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                 start_new_session=True)
        try:
            return child.wait()
        except KeyboardInterrupt:
            # SIGTERM: a SIGINT this tool was started ignoring, the training inherited ignoring, and ignores
            child.send_signal(signal.SIGTERM)
            child.wait()
            raise


def _stop_on_sigterm_too():
    """SIGTERM (a scheduler's stop) stops the study like Ctrl-C. A SIGINT ignored at start stays ignored, as in
    train_net.py: in a script's background job (``tools/ablate.py ... &``) a Ctrl-C is meant for the script; SIGTERM
    stops the study there."""

    def stop(signum, frame):
        raise KeyboardInterrupt(f"ablation stopped by {signal.Signals(signum).name}; run the same command again to "
                                "resume")

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def _check(status, what, run, log_path):
    from focus_detr.engine.training_process import last_error

    if status != 0:
        if status in (130, 143, -2, -15):
            raise KeyboardInterrupt(f"ablation stopped during {what} of {run.variant}, seed {run.seed}; run the same "
                                    "command again to resume")
        raise ChildProcessError(f"{what} of {run.variant}, seed {run.seed} failed (exit status {status}): "
                                f"{last_error(log_path)} (full output: {log_path})")


def _train_and_evaluate(args, settings, overrides_of):
    """The function :func:`run_pending` calls for an unfinished run: trains (resuming an interrupted training) and
    evaluates the final weights with the run's ``settings``, returns the run's record."""
    from focus_detr.analysis.ablation_settings import training_command_overrides
    from focus_detr.child_processes import child_environment
    from focus_detr.engine.evaluation import read_eval_results

    # torch reads OMP_NUM_THREADS when it starts: the children's thread count
    child_env = child_environment({**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads > 0 else None)

    def train_and_evaluate(run):
        log_path = os.path.join(run.folder, "ablation_output.txt")
        config_file, overrides = settings[run]["config_file"], settings[run]["overrides"]
        final_weights = os.path.join(run.folder, "model_final.pth")
        seconds_path = os.path.join(run.folder, "ablation_train_seconds.txt")
        if not os.path.isfile(final_weights):
            resume = ["--resume"] if os.path.isfile(os.path.join(run.folder, "last_checkpoint")) else []
            start = time.perf_counter()
            try:
                status = _run_logged([sys.executable, TRAIN_NET, "--config-file", config_file, *resume,
                                      *training_command_overrides(run, settings[run])], log_path, child_env)
            finally:  # an interrupted attempt's time counts too
                with open(seconds_path, "a") as f:
                    f.write(f"{time.perf_counter() - start:.1f}\n")
            _check(status, "training", run, log_path)
            if not os.path.isfile(final_weights):
                raise ChildProcessError(f"training of {run.variant}, seed {run.seed} wrote no {final_weights}")
        status = _run_logged([sys.executable, TRAIN_NET, "--config-file", config_file, "--eval-only",
                              f"train.init_checkpoint={final_weights}", f"train.output_dir={run.eval_folder}",
                              *overrides], log_path, child_env)
        _check(status, "evaluation", run, log_path)
        results = read_eval_results(os.path.join(run.eval_folder, "eval_results.json"))
        with open(seconds_path) as f:
            train_seconds = sum(float(line) for line in f if line.strip())
        bbox = results.get("bbox", {})
        return {**{k: bbox.get(k, float("nan")) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
                "train_minutes": train_seconds / 60, "overrides": overrides_of[run.variant], "eval_results": results}

    return train_and_evaluate


def _measure(args, runs, records, overrides_of):
    """GFLOPs (mean over --flop-images test images) and batch-1 latency (median over interleaved rounds, every
    finished run's model once per round, under the evaluation's autocast) of each finished run; adds them to its
    record."""
    from focus_detr.analysis.flops import count_flops
    from focus_detr.analysis.inputs import dataset_inputs
    from focus_detr.analysis.timing import inference_call, summarize, time_interleaved
    from focus_detr.engine import build_model, inference_amp_dtype, load_config, resolve_device
    from focus_detr.engine.inference_weights import load_inference_weights

    device = resolve_device(args.device, "--device", "--device cpu")
    inputs, calls = None, {}
    for run, record in zip(runs, records):
        cfg = load_config(args.config_file, overrides_of[run.variant] + list(args.opts))
        inputs = inputs or dataset_inputs(cfg, args.flop_images)
        model = build_model(cfg, device)
        load_inference_weights(model, cfg, os.path.join(run.folder, "model_final.pth"))  # the evaluated weights
        model.eval()
        record["gflops"] = count_flops(model, inputs).total / 1e9
        # timed in the precision the run's evaluation ran in (train.inference_amp), as the sweep does
        calls[run] = inference_call(model, inputs, device, inference_amp_dtype(cfg, device))
    seconds = time_interleaved(calls, device, warmup=1, repeats=args.latency_rounds)
    for run, record in zip(runs, records):
        record["latency_ms"] = summarize(seconds[run])["median_ms"]


def main(args):
    from focus_detr.analysis.ablation import check_shared_overrides, planned_runs, run_pending, variant_overrides
    from focus_detr.analysis.ablation_settings import run_settings
    from focus_detr.analysis.ablation_report import selection_columns, write_csv, write_markdown, write_plot
    from focus_detr.engine import check_datasets_registered, load_config, resolve_device
    from focus_detr.engine.test_set import check_test_set

    if args.threads < 0:
        raise ValueError(f"--threads must be 0 (all cores) or more, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if args.flop_images < 1:  # now, not after hours of training runs
        raise ValueError(f"--flop-images must be at least 1, got {args.flop_images}")
    if args.latency_rounds < 5:
        raise ValueError(f"--latency-rounds must be at least 5 (a median of fewer is noise), got {args.latency_rounds}")
    reserved = [o for o in args.opts if o.split("=", 1)[0].strip() in RESERVED_KEYS]
    if reserved:
        raise ValueError(f"{', '.join(reserved)}: the ablation sets {', '.join(RESERVED_KEYS)} for each run itself")
    # the children run in the repository: paths relative to where this was started would point elsewhere there
    args.config_file, args.output = os.path.abspath(args.config_file), os.path.abspath(args.output)
    if os.path.exists(args.output) and not os.path.isdir(args.output):  # makedirs said only "File exists"
        raise ValueError(f"--output {args.output} is a file; name a folder for the runs and the report")
    cfg = load_config(args.config_file, args.opts)
    check_datasets_registered(cfg.dataloader)
    if cfg.dataloader.get("evaluator", None) is not None:  # each run's training no longer evaluates: checked here
        check_test_set(cfg)
    resolve_device(args.device, "--device", "--device cpu")  # now: it times the variants after all their trainings
    runs = planned_runs(args.output, args.variants, range(1, args.seeds + 1))
    overrides_of = {v: variant_overrides(cfg, v) for v in args.variants}
    check_shared_overrides(args.opts, overrides_of)  # also before printing: the printed variants would be wrong too
    # the children's thread count: --threads, or torch's default, which they read from the same environment as this
    threads = torch.get_num_threads()
    settings = {run: run_settings(args.config_file, overrides_of[run.variant] + list(args.opts), run, threads)
                for run in runs}
    for variant, overrides in overrides_of.items():
        print(f"[ablation] {variant}: {' '.join(overrides) or '(no overrides)'}")
    if args.print_overrides:
        return None
    os.makedirs(args.output, exist_ok=True)
    _stop_on_sigterm_too()
    records = run_pending(runs, _train_and_evaluate(args, settings, overrides_of), settings=settings)
    finished = [(run, record) for run, record in zip(runs, records) if record is not None]
    if len(finished) < len(runs):
        print(f"[ablation] {len(runs) - len(finished)} runs are still running in another invocation; this report "
              "covers the finished ones (the last invocation to finish reports them all)")
    if not finished:
        return []
    runs, records = [run for run, _ in finished], [record for _, record in finished]
    _measure(args, runs, records, overrides_of)
    rows = [{**record, **selection_columns(record.get("eval_results")), "variant": run.variant, "seed": run.seed}
            for run, record in zip(runs, records)]
    title = f"Ablation of {os.path.basename(args.config_file)} ({len(runs)} runs, seeds 1-{args.seeds})"
    paths = [os.path.join(args.output, name) for name in ("ablation.csv", "ablation.md", "ablation.png")]
    write_csv(rows, paths[0])
    write_markdown(rows, overrides_of, paths[1], title, shared_overrides=args.opts)
    write_plot(rows, paths[2], title)
    with open(paths[1]) as f:
        print(f.read())
    print("wrote " + ", ".join(paths))
    return rows


if __name__ == "__main__":
    from focus_detr.engine.cli import run_reporting_errors

    sys.exit(run_reporting_errors(main, parse_args()))
