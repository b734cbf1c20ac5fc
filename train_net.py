#!/usr/bin/env python
"""Train or evaluate Focus-DETR from a LazyConfig file (detectron2's command-line conventions).

Examples:
    python train_net.py --config-file configs/focus_detr_r18_trees.py
    python train_net.py --config-file configs/focus_detr_r18_trees.py --resume
    python train_net.py --config-file configs/focus_detr_r50_4scale_12ep.py --eval-only train.init_checkpoint=ckpt.pth
    python train_net.py --config-file CFG --num-gpus 8                      # 8 GPU processes (NCCL)
    python train_net.py --config-file CFG --num-gpus 2 train.device=cpu     # 2 CPU processes (gloo)

``--num-gpus N`` starts N processes on this machine (detectron2's ``launch``): with ``train.device=cpu`` (the
default without a GPU) they are CPU processes talking over gloo, otherwise one process per GPU over NCCL.
Multi-node: add ``--num-machines M --machine-rank R --dist-url tcp://HOST:PORT`` on every machine.
``key=value`` pairs anywhere on the line override config entries; an unknown key is an error.

One run at a time per ``train.output_dir`` (a second one is refused, naming the process that holds the folder);
training from scratch into a folder that holds an earlier run's checkpoints is refused (add ``--resume``).
Ctrl-C, SIGTERM or SIGHUP stops training after the current iteration with a checkpoint saved there, printing one line
with the command that resumes it (exit status 130 / 143 / 129); a second Ctrl-C stops at once (a checkpoint being
written is finished first). See docs/reliability.md.
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import contextlib
import logging
import os
import signal
import sys

from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
import torch
from torch.multiprocessing import ProcessExitedException

from focus_detr.engine import (
    ConfigError,
    check_before_setup,
    check_datasets_registered,
    end_process_group,
    load_config,
    require_sections,
    resolve_device,
    run_evaluation,
    run_training,
)
from focus_detr.engine.arguments import check_tcp_rendezvous, parse_args_with_overrides
from focus_detr.engine.cli import (report_interruption, run_reporting_errors, setup_with_plain_log,
                                  stop_recorded_in_log)
from focus_detr.engine.config_files import keep_saved_config_order
from focus_detr.engine.interrupt import (ForwardedStop, SignalInterrupt, StopRequest, resume_command,
                                        stop_signals_interrupt)
from focus_detr.engine.output_lock import claim_output_dir
from focus_detr.engine.resume import keep_training_config, killed_process_error, run_record_kept
from focus_detr.engine.rng import fix_random_seed


def parse_args(argv=None):
    """detectron2's command line, with ``key=value`` overrides accepted in any position."""
    return parse_args_with_overrides(default_argument_parser(), argv)


def main(args, cfg=None):
    """Trains or evaluates on this process. ``cfg``: the config already loaded from ``args`` in this process
    (loading a config file twice in one process would run its code twice, e.g. register its datasets again).
    Training stops after the current iteration on SIGINT / SIGTERM (raising ``TrainingInterrupted``, whose message
    names the checkpoint and ``args.resume_command``, by default this process's command line with ``--resume``).
    ``args.output_claim``: the lock held on ``train.output_dir`` (see ``claim_output_dir``), checked at each save."""
    if cfg is None:
        cfg = load_config(args.config_file, args.opts)
    # before config.yaml is overwritten
    continued = check_before_setup(cfg, resume=args.resume, eval_only=args.eval_only)
    with run_record_kept(cfg.train.output_dir) as earlier_config:  # and put back if refused after that
        seed_note = None if args.eval_only else fix_random_seed(
            cfg.train, earlier_config if args.resume else None, continues_run=continued is not None)
        setup_with_plain_log(cfg, args)
        if comm.is_main_process() and cfg.train.output_dir:
            keep_saved_config_order(cfg, os.path.join(cfg.train.output_dir, "config.yaml"))
        setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="focus_detr")
        if seed_note and comm.is_main_process():
            logging.getLogger("focus_detr").info(seed_note)
        if args.eval_only and comm.is_main_process() and cfg.train.output_dir:
            keep_training_config(cfg.train.output_dir, earlier_config)
        with stop_recorded_in_log(cfg.train.output_dir):
            if args.eval_only:
                given = any(override.split("=", 1)[0] == "train.init_checkpoint" for override in args.opts)
                return run_evaluation(cfg, resume=args.resume, init_checkpoint_given=given)
            with StopRequest() as stop_request:
                command = getattr(args, "resume_command", None) or resume_command()
                run_training(cfg, resume=args.resume, stop_request=stop_request, resume_command=command,
                             output_claim=getattr(args, "output_claim", None))
    return None


def _process_main(args):
    """``main`` on each of several processes. An interruption is one line and an exit status (130 / 143) from the
    main process, which the launching process passes on; the others end quietly with status 0 (a non-zero status
    from them would make the launcher terminate the main process before it has reported)."""
    try:
        cfg = load_config(args.config_file, args.opts)
        # checked in the launching process too, where a script may have registered more than the config file does
        check_datasets_registered(cfg.get("dataloader", {}), started_process=True)
        return main(args, cfg)
    except KeyboardInterrupt as interrupt:
        sys.exit(report_interruption(interrupt) if comm.is_main_process() else 0)
    finally:
        end_process_group()


@contextlib.contextmanager
def _cpu_processes_environment(cfg, args):
    """For several CPU processes on this machine, the environment they start with, put back afterwards (a caller's
    later runs in this Python process, or processes it starts, keep their own): on a GPU machine the GPUs are hidden,
    which must not pick NCCL (detectron2's ``launch`` chooses gloo when no GPU is visible); and each process gets its
    share of torch's threads, unless OMP_NUM_THREADS is set: with torch's default, each process used every core
    (2 processes on 2 busy cores: 20.6 s per iteration against 0.9 s)."""
    changes = {}
    if args.num_gpus * args.num_machines > 1 and resolve_device(cfg.train.device) == "cpu":
        changes["CUDA_VISIBLE_DEVICES"] = ""
        if args.num_gpus > 1 and "OMP_NUM_THREADS" not in os.environ:  # read by each process's torch at its start
            changes["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads() // args.num_gpus))
    earlier = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in earlier.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _launch_processes(args, output_dir):
    """``launch`` of several processes. SIGINT / SIGTERM sent to this process alone reach them as a stop request;
    returns the exit status of a stopped run (its main process printed the line), else 0. A process killed from
    outside is one line naming the checkpoint in ``output_dir`` a resume starts from."""
    # torch logs "Terminating process N via signal SIGTERM" for the others when one process fails, ahead of the line
    # that says what happened
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    spawn_level = spawn_log.level
    with ForwardedStop() as forwarded:
        try:
            spawn_log.setLevel(logging.ERROR)
            launch(_process_main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                   dist_url=args.dist_url, args=(args,))  # each process loads the config file itself
        except ProcessExitedException as exited:
            if ForwardedStop.stopped_status(exited.exit_code):
                return exited.exit_code
            if forwarded.signal_number is None:
                if exited.signal_name != "SIGKILL":  # a crash (SIGSEGV, SIGABRT, ...) keeps its report
                    raise
                raise killed_process_error(exited, output_dir if args.machine_rank == 0 else "", args.resume_command,
                                           training=not args.eval_only) from None
            # a process ended by the signal passed on (an evaluation, a start-up): the line and status of the signal
            # this process got, as one process gives them
            interrupt = (KeyboardInterrupt() if forwarded.signal_number == signal.SIGINT
                         else SignalInterrupt(forwarded.signal_number))
            return report_interruption(interrupt)
        finally:
            spawn_log.setLevel(spawn_level)
    return 0


def _check_process_arguments(args):
    """Refuses process arguments that would hang or fail with a traceback inside ``launch``, and gives one machine a
    free port: the default ``--dist-url`` is the same for every run of this user, so a second multi-process run on
    the machine would find it taken."""
    for flag, value in (("--num-gpus", args.num_gpus), ("--num-machines", args.num_machines)):
        if value < 1:  # detectron2's launch would quietly run one process
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if not 0 <= args.machine_rank < args.num_machines:  # the others would wait for it for good
        raise ValueError(f"--machine-rank must be between 0 and --num-machines - 1 = {args.num_machines - 1}, got "
                         f"{args.machine_rank}")
    if args.num_machines == 1 and args.dist_url == default_argument_parser().get_default("dist_url"):
        args.dist_url = "auto"
    scheme = args.dist_url.split("://", 1)[0] if "://" in args.dist_url else args.dist_url
    port = args.dist_url.rsplit(":", 1)[-1] if scheme == "tcp" else "1"
    if (scheme not in ("auto", "tcp", "env", "file") or (scheme == "auto" and args.num_machines > 1)
            or not (port.isdigit() and 0 < int(port) < 65536)):  # torch: "Port could not be cast to integer value"
        raise ValueError(f"--dist-url must be tcp://HOST:PORT of the first machine (or auto on one machine), got "
                         f"{args.dist_url!r}")
    if scheme == "tcp" and args.num_gpus * args.num_machines > 1:
        host = args.dist_url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
        check_tcp_rendezvous(host, int(port), listens=args.machine_rank == 0)


def _check_batch_splits(cfg, args):
    """Refuses, before any process starts, a training batch the processes cannot share equally: each process found
    it only after starting, among the warnings of the launch."""
    processes = args.num_gpus * args.num_machines
    batch = ((cfg.get("dataloader", None) or {}).get("train", None) or {}).get("total_batch_size", None)
    if not args.eval_only and processes > 1 and isinstance(batch, int) and batch % processes:
        raise ConfigError(f"dataloader.train.total_batch_size {batch} cannot be split among {processes} processes "
                          "(--num-gpus x --num-machines): make it a multiple of the number of processes")


def _launch(args):
    _check_process_arguments(args)
    cfg = load_config(args.config_file, args.opts)
    require_sections(cfg, ("train",), "train_net.py")
    if not cfg.train.get("output_dir", ""):  # detectron2's set-up writes its log and the config there
        raise ConfigError("train.output_dir is empty: name the folder for the log, the config and the results")
    # before the claim creates the folder: a refused command left an empty one (or config.yaml and log.txt)
    check_before_setup(cfg, resume=args.resume, eval_only=args.eval_only)
    check_datasets_registered(cfg.get("dataloader", {}))
    _check_batch_splits(cfg, args)
    # The lock is held here, by the process that runs main or waits for the processes running it, from before
    # anything is written into the folder until every process has ended; on a multi-machine run, by the first machine.
    with _cpu_processes_environment(cfg, args), claim_output_dir(
            cfg.train.output_dir, fresh_training=not (args.resume or args.eval_only),
            lock=args.machine_rank == 0) as claim:
        args.output_claim = claim  # the main process checks it before each save (started processes get it too)
        if args.num_machines > 1:  # launch waits without a word until every machine has joined
            print(f"machine {args.machine_rank} of {args.num_machines}: waiting for the other machines at "
                  f"{args.dist_url} (the same command with --machine-rank 0 to {args.num_machines - 1})",
                  file=sys.stderr, flush=True)
        if args.num_gpus * args.num_machines > 1:
            return _launch_processes(args, cfg.train.output_dir)
        return main(args, cfg)  # one process: here, reusing this config


def cli(argv=None):
    """Parses ``argv``, checks config / overrides / datasets up front (so errors are one line, before any worker
    starts) and launches ``main`` on every process. Returns the process exit code."""
    args = parse_args(argv)
    # this process's command line (started processes have another), or train_net.py with the given arguments
    args.resume_command = resume_command(None if argv is None else [sys.executable, os.path.abspath(__file__), *argv])
    with stop_signals_interrupt():  # SIGTERM / SIGHUP outside training (set-up, --eval-only): one line, not silence
        return run_reporting_errors(_launch, args)


if __name__ == "__main__":
    sys.exit(cli())
