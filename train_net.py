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
"""
import os
import sys

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from focus_detr.engine import (
    check_datasets_registered,
    check_output_dir,
    load_config,
    resolve_device,
    run_evaluation,
    run_training,
)
from focus_detr.engine.arguments import parse_args_with_overrides
from focus_detr.engine.cli import run_reporting_errors


def parse_args(argv=None):
    """detectron2's command line, with ``key=value`` overrides accepted in any position."""
    return parse_args_with_overrides(default_argument_parser(), argv)


def main(args, cfg=None):
    """Trains or evaluates on this process. ``cfg``: the config already loaded from ``args`` in this process
    (loading a config file twice in one process would run its code twice, e.g. register its datasets again)."""
    if cfg is None:
        cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="focus_detr")
    if args.eval_only:
        return run_evaluation(cfg)
    run_training(cfg, resume=args.resume)
    return None


def _hide_gpus_for_cpu_processes(cfg, args):
    """On a GPU machine, CPU multi-process training must not pick NCCL: hide the GPUs from the worker processes
    (detectron2's ``launch`` chooses gloo when no GPU is visible)."""
    if args.num_gpus * args.num_machines > 1 and resolve_device(cfg.train.device) == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def _launch(args):
    cfg = load_config(args.config_file, args.opts)
    check_datasets_registered(cfg.get("dataloader", {}))
    check_output_dir(cfg.train.get("output_dir", ""))
    _hide_gpus_for_cpu_processes(cfg, args)
    single_process = args.num_gpus * args.num_machines == 1
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        # one process runs main right here: it reuses this config; started processes load the file themselves
        args=(args, cfg) if single_process else (args,),
    )


def cli(argv=None):
    """Parses ``argv``, checks config / overrides / datasets up front (so errors are one line, before any worker
    starts) and launches ``main`` on every process. Returns the process exit code."""
    return run_reporting_errors(_launch, parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
