#!/usr/bin/env python
"""This code against an earlier commit of it, interleaved in one process: inference and a training step of the same
config with the same weights, as median old/new time ratios, with the outputs compared.

The earlier commit's package and configs are exported with ``git archive`` and imported under another name
(``focus_detr_at_<commit>``), so both run side by side. The commit's compiled extension is the working tree's when
their C++ sources agree, else built from its own sources (CPU only).

    python scripts/compare_revision.py --rev 15afcd6^ --config-file configs/focus_detr_r18_trees.py --threads 2
"""
import argparse
import copy
import glob
import importlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY

from focus_detr.analysis.inputs import dataset_inputs, synthetic_inputs, synthetic_training_batch
from focus_detr.analysis.timing import median_ratio, time_interleaved
from focus_detr.engine import amp_autocast, load_config
from focus_detr.engine.cli import run_reporting_errors
from focus_detr.engine.inference_weights import load_inference_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "projects/FocusDETR/focus_detr"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="the earlier commit (anything git rev-parse takes)")
    parser.add_argument("--config-file", default="configs/focus_detr_r18_trees.py", metavar="FILE")
    parser.add_argument("--weights", default="", metavar="FILE",
                        help="weights for both (e.g. the main job's model_final.pth); default: random, seed 0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=9, help="test images per inference round (one per call)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="infer on --images synthetic images of this size instead of the config's test set")
    parser.add_argument("--train-size", type=int, nargs=2, default=[352, 352], metavar=("H", "W"))
    parser.add_argument("--train-batch-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per task (median of their ratios)")
    parser.add_argument("--tasks", nargs="+", choices=("inference", "train"), default=["inference", "train"])
    parser.add_argument("--amp", action="store_true",
                        help="both revisions under bfloat16 autocast (inference and the training step's forward)")
    return parser.parse_args(argv)


def _git(*args):
    return subprocess.run(["git", "-C", REPO, *args], check=True, capture_output=True, text=True).stdout.strip()


def _build_cpu_extension(csrc, destination, build_directory):
    """Compiles ``csrc``'s C++ sources (no CUDA) as ``_C`` with setup.py's flags, into ``destination``."""
    from torch.utils.cpp_extension import load

    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    os.makedirs(build_directory, exist_ok=True)
    module = load(name="_C", sources=sources, extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
                  build_directory=build_directory)
    shutil.copy(module.__file__, destination)
    sys.modules.pop("_C", None)


def import_revision(rev, workdir):
    """Exports ``rev``'s package and configs into ``workdir`` under the name ``focus_detr_at_<commit>``; returns
    (module name, configs folder)."""
    try:
        commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError:
        raise ValueError(f"--rev {rev!r} is not a commit of {REPO}")
    name = f"focus_detr_at_{commit[:10]}"
    # the package stays at its place in the tree, where it finds the files it reads
    archive = subprocess.run(["git", "-C", REPO, "archive", commit, PACKAGE, "configs", "requirements"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", workdir], input=archive, check=True)
    package_parent = os.path.join(workdir, os.path.dirname(PACKAGE))
    os.rename(os.path.join(workdir, PACKAGE), os.path.join(package_parent, name))
    configs = os.path.join(workdir, "configs")
    pattern = re.compile(r"(?<![.\w])focus_detr\b")  # the package, not its module modeling/focus_detr.py
    for root in (os.path.join(package_parent, name), configs):
        for folder, _, files in os.walk(root):
            for file in files:
                if file.endswith(".py"):
                    path = os.path.join(folder, file)
                    with open(path) as f:
                        text = f.read()
                    with open(path, "w") as f:
                        f.write(pattern.sub(name, text))
    layers = os.path.join(package_parent, name, "layers")
    if subprocess.run(["git", "-C", REPO, "diff", "--quiet", commit, "--", f"{PACKAGE}/layers/csrc"]).returncode:
        print(f"{rev} has other C++ sources than the working tree: building its CPU extension (about a minute)")
        _build_cpu_extension(os.path.join(layers, "csrc"), layers, os.path.join(workdir, "build"))
    else:
        current_layers = os.path.join(REPO, PACKAGE, "layers")
        for file in os.listdir(current_layers):
            if file.startswith("_C") and file.endswith((".so", ".pyd")):
                shutil.copy(os.path.join(current_layers, file), layers)
    sys.path.insert(0, package_parent)
    # both packages register their meta-architecture under the same name: keep the current one registered
    registered = dict(META_ARCH_REGISTRY._obj_map)
    META_ARCH_REGISTRY._obj_map.pop("FocusDETR", None)
    try:
        importlib.import_module(name)
        importlib.import_module(f"{name}.modeling")
    finally:
        META_ARCH_REGISTRY._obj_map.clear()
        META_ARCH_REGISTRY._obj_map.update(registered)
    return name, configs


def build_revision_model(configs, config_file, state_dict):
    """The earlier commit's model of the same config (its own config files), loaded with ``state_dict``."""
    relative = os.path.relpath(os.path.abspath(config_file), os.path.join(REPO, "configs"))
    if relative.startswith(os.pardir):
        raise ValueError(f"--config-file {config_file} is not in {REPO}/configs, so the commit has no copy of it")
    if not os.path.isfile(os.path.join(configs, relative)):
        raise ValueError(f"the commit has no configs/{relative}")
    old_cfg = LazyConfig.load(os.path.join(configs, relative))
    model = instantiate(old_cfg.model)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(f"the two commits' models have different parameters: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    return model


def _max_output_difference(old_outputs, new_outputs):
    worst = 0.0
    for old, new in zip(old_outputs, new_outputs):
        old, new = old["instances"], new["instances"]
        if len(old) != len(new):
            return float("inf")
        for field in ("pred_boxes", "scores"):
            a, b = old.get(field), new.get(field)
            a, b = (a.tensor, b.tensor) if hasattr(a, "tensor") else (a, b)
            worst = max(worst, (a - b).abs().max().item() if len(a) else 0.0)
    return worst


def _training_step(model, optimizer, batch, seed, amp_dtype):
    def step():
        torch.manual_seed(seed)
        with amp_autocast("cpu", amp_dtype):
            losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        return losses
    return step


def _report(task, seconds, rounds):
    old, new = seconds["old"], seconds["new"]
    ratio = median_ratio(old, new)
    print(f"{task}: earlier {statistics.median(old) * 1000:.1f} ms, now {statistics.median(new) * 1000:.1f} ms "
          f"(medians of {rounds}); now is {ratio:.3f}x faster (median of per-round old/new ratios)")


def main(args):
    torch.set_num_threads(args.threads)
    # the earlier commit's data config looks for the datasets next to its own copy otherwise
    os.environ.setdefault("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
    cfg = load_config(args.config_file)
    amp_dtype = torch.bfloat16 if args.amp else None
    torch.manual_seed(0)
    new_model = instantiate(cfg.model)
    load_inference_weights(new_model, cfg, args.weights)
    with tempfile.TemporaryDirectory() as workdir:
        name, configs = import_revision(args.rev, workdir)
        old_model = build_revision_model(configs, args.config_file, new_model.state_dict())
        print(f"{args.config_file}: the working tree against {args.rev} (imported as {name}), {args.threads} threads, "
              f"{'bfloat16 autocast' if args.amp else 'float32'}")
        if "inference" in args.tasks:
            inputs = (synthetic_inputs(*args.input_size, args.images) if args.input_size
                      else dataset_inputs(cfg, args.images))
            old_model.eval(), new_model.eval()

            def run(model):
                with torch.no_grad(), amp_autocast("cpu", amp_dtype):
                    return [model([item])[0] for item in inputs]

            print(f"inference on {len(inputs)} images, one per call: largest difference of boxes/scores "
                  f"{_max_output_difference(run(old_model), run(new_model)):.3g}")
            _report("inference", time_interleaved({"old": lambda: run(old_model), "new": lambda: run(new_model)},
                                                  "cpu", 1, args.rounds), args.rounds)
        if "train" in args.tasks:
            height, width = args.train_size
            batch = synthetic_training_batch(height, width, args.train_batch_size, 3, new_model.num_classes)
            old_model.train(), new_model.train()
            optimizers = {}
            for key, model in (("old", old_model), ("new", new_model)):
                optimizer_cfg = copy.deepcopy(cfg.optimizer)
                optimizer_cfg.params.model = model
                optimizers[key] = instantiate(optimizer_cfg)
            old_losses = _training_step(old_model, optimizers["old"], batch, 0, amp_dtype)()
            new_losses = _training_step(new_model, optimizers["new"], batch, 0, amp_dtype)()
            worst = max(abs(old_losses[k].item() - new_losses[k].item()) for k in new_losses)
            print(f"training step, {args.train_batch_size} x {height}x{width}: largest loss difference in the first "
                  f"step {worst:.3g} ({len(new_losses)} terms)")
            steps = {"old": _training_step(old_model, optimizers["old"], batch, 1, amp_dtype),
                     "new": _training_step(new_model, optimizers["new"], batch, 1, amp_dtype)}
            _report("training step", time_interleaved(steps, "cpu", 1, args.rounds), args.rounds)


if __name__ == "__main__":
    sys.exit(run_reporting_errors(lambda: main(parse_args())))
