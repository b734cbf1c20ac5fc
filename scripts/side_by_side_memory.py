#!/usr/bin/env python
"""Peak GPU memory of the official detrex Focus-DETR R50 and ours, in one process, on the same synthetic image: the
memory part of ../shared/official/side_by_side.py's timing (which does not measure memory). For measuring only.

    cd OFFICIAL_DIR && PYTHONPATH=<setup_official.sh's>:<checkout>/projects/FocusDETR \\
        python <checkout>/scripts/side_by_side_memory.py <checkout>

env: DEVICE (cuda | cpu), SIZE (800x1333), TASKS (inference,train). Prints JSON lines: first which deformable
attention the official model has (``official_attention``: its compiled ``detrex._C`` or none), then one line per
model, precision and task: ``peak_mib``, the most memory allocated during one call beyond what was allocated before it
(weights, the other model), after one warm-up call; ``weights_mib``, the model's parameters and buffers. Ours runs in
float32 and under bfloat16 autocast, the official model in float32 (its CUDA op has no bfloat16 kernel). Training is
one forward and backward at batch 1 (no optimizer), as side_by_side.py times it. On a CPU ``peak_mib`` is None.
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import json
import os
import sys

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances

OFFICIAL_CONFIG = "projects/focus_detr/configs/focus_detr_resnet/focus_detr_r50_4scale_12ep.py"


def official_attention():
    """Which deformable attention the official model runs: its compiled op when ``detrex._C`` has one."""
    try:
        from detrex import _C
    except ImportError:
        return "none (detrex._C does not import)"
    return "detrex._C (compiled CUDA op)" if hasattr(_C, "ms_deform_attn_forward") else "none (detrex._C is empty)"


def build_official(device):
    torch.manual_seed(0)
    cfg = LazyConfig.load(OFFICIAL_CONFIG)
    cfg.model.device = device
    return instantiate(cfg.model).to(device)


def build_ours(checkout, device):
    from focus_detr.engine import build_model, load_config

    torch.manual_seed(0)
    cfg = load_config(os.path.join(checkout, "configs/focus_detr_r50_4scale_12ep.py"),
                      ['train.init_checkpoint=""', f"train.device={device}"])
    return build_model(cfg, device)


def synthetic_item(height, width, with_boxes):
    generator = torch.Generator().manual_seed(0)
    item = {"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator),
            "height": height, "width": width}
    if with_boxes:
        xy = torch.rand(3, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
        wh = (torch.rand(3, 2, generator=generator) * 0.25 + 0.05) * torch.tensor([width, height])
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        instances.gt_classes = torch.tensor([1, 5, 7])
        item["instances"] = instances
    return item


def task_call(model, item, task, device, amp_dtype):
    def call():
        with torch.autocast(torch.device(device).type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            if task == "inference":
                model.eval()
                with torch.no_grad():
                    model([item])
            else:
                model.train()
                sum(model([item]).values()).backward()
        model.zero_grad(set_to_none=True)

    return call


def peak_mib(call, device):
    """MiB allocated at the peak of ``call()`` beyond the allocation before it (None on a CPU)."""
    call()  # warm-up: lazily allocated state and workspaces
    if torch.device(device).type != "cuda":
        call()
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def weights_mib(model):
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20


def main(checkout):
    device = os.environ.get("DEVICE", "cuda")
    height, width = (int(v) for v in os.environ.get("SIZE", "800x1333").split("x"))
    tasks = os.environ.get("TASKS", "inference,train").split(",")
    print(json.dumps({"device": device, "size": f"{height}x{width}", "official_attention": official_attention()}),
          flush=True)
    models = {"official": build_official(device), "ours": build_ours(checkout, device)}
    runs = [("official", None), ("ours", None), ("ours", torch.bfloat16)]
    for task in tasks:
        item = synthetic_item(height, width, with_boxes=task == "train")
        for name, amp_dtype in runs:
            model = models[name]
            peak = peak_mib(task_call(model, item, task, device, amp_dtype), device)
            print(json.dumps({"model": name, "precision": str(amp_dtype or torch.float32).replace("torch.", ""),
                              "task": task, "size": f"{height}x{width}", "peak_mib": peak,
                              "weights_mib": weights_mib(model)}), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__ if len(sys.argv) == 2 else "usage: side_by_side_memory.py CHECKOUT (run from the official "
                 "folder)")
    if not os.path.isfile(OFFICIAL_CONFIG):
        sys.exit(f"error: {OFFICIAL_CONFIG} not found here: run this from the official code's folder "
                 "(../shared/official/setup_official.sh unpacks it)")
    sys.exit(main(os.path.abspath(sys.argv[1])))
