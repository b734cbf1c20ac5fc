"""A tiny stand-in detector and a synthetic COCO dataset for fast engine tests (not part of the package).

The detector draws from the global torch RNG in training (like Focus-DETR's denoising queries) so that tests of
exact resume notice a generator that is not restored. Two knobs that leave its numbers unchanged serve the tests of
stopping a run: ``step_seconds`` (each training forward sleeps, giving a signal sent from outside time to land) and
``signal_step`` / ``signals`` (the process signals itself during a given training forward; ``inference_signals``:
during its first inference forward). ``nan_step`` makes one training forward's box loss NaN, as a diverging run's;
``oom_step`` makes one raise torch's error for a GPU out of memory.
"""
import json
import os
import signal
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from focus_detr.data import UnreadableImageError
from PIL import Image
from torch import nn
from torch.nn import functional as F


class ToyDetector(nn.Module):
    """images -> conv features -> ``num_queries`` boxes + class logits. Training: L1 + BCE against the first GT box."""

    def __init__(self, num_classes=1, num_queries=4, input_size=32, feature_noise=0.05, step_seconds=0.0,
                 signal_step=None, signals=(), inference_signals=(), nan_step=None, nan_rank=None, oom_step=None,
                 oom_rank=None):
        """``step_seconds``: sleep in every training forward. ``signals``: signal numbers this process sends itself
        during training forward number ``signal_step`` (0-based, counted from this model's creation);
        ``inference_signals``: during its first inference forward. ``nan_step``: the training forward (same count)
        whose box loss is NaN, in process ``nan_rank`` (None: in every process); ``oom_step``: the training forward
        that runs out of GPU memory, in process ``oom_rank`` (None: in every process)."""
        super().__init__()
        self.feature_noise = feature_noise
        self.step_seconds = step_seconds
        self.signal_step = signal_step
        self.signals = list(signals)
        self.inference_signals = list(inference_signals)
        self.nan_step = nan_step
        self.nan_rank = nan_rank
        self.oom_step = oom_step
        self.oom_rank = oom_rank
        self._training_forwards = 0
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.input_size = input_size
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten()
        )
        self.class_embed = nn.Linear(128, num_queries * num_classes)
        self.bbox_embed = nn.Linear(128, num_queries * 4)
        self.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1), False)

    def forward(self, batched_inputs):
        device = self.pixel_mean.device
        images = torch.stack(
            [
                F.interpolate(((x["image"].to(device).float() - self.pixel_mean) / self.pixel_std)[None], size=(self.input_size,) * 2, mode="bilinear")[0]
                for x in batched_inputs
            ]
        )
        features = self.backbone(images)
        if self.training and self.feature_noise > 0:
            features = features + self.feature_noise * torch.randn_like(features)
        logits = self.class_embed(features).view(-1, self.num_queries, self.num_classes)
        boxes = self.bbox_embed(features).view(-1, self.num_queries, 4).sigmoid()  # normalised x0, y0, x1-x0, y1-y0
        if self.training:
            if self._training_forwards == self.oom_step and self.oom_rank in (None, comm.get_rank()):
                self._training_forwards += 1
                raise torch.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
                    "1.06 GiB is free. Of the allocated memory 75.10 GiB is allocated by PyTorch"
                )
            diverged = self._training_forwards == self.nan_step and self.nan_rank in (None, comm.get_rank())
            self._after_training_forward()
            losses = self.losses(batched_inputs, logits, boxes)
            if diverged:
                losses["loss_bbox"] = losses["loss_bbox"] * float("nan")
            return losses
        for number in self.inference_signals:
            os.kill(os.getpid(), number)
        self.inference_signals = []
        return self.inference(batched_inputs, logits, boxes)

    def _after_training_forward(self):
        if self._training_forwards == self.signal_step:
            for number in self.signals:
                os.kill(os.getpid(), number)
        self._training_forwards += 1
        time.sleep(self.step_seconds)

    def losses(self, batched_inputs, logits, boxes):
        box_losses, class_losses = [], []
        for x, image_logits, image_boxes in zip(batched_inputs, logits, boxes):
            gt = x["instances"].to(logits.device)
            h, w = x["image"].shape[-2:]
            target_logits = torch.zeros_like(image_logits)
            if len(gt) > 0:
                box = gt.gt_boxes.tensor[0] / torch.tensor([w, h, w, h], device=logits.device)
                target = torch.stack([box[0], box[1], box[2] - box[0], box[3] - box[1]])
                box_losses.append((image_boxes[0] - target).abs().sum())
                target_logits[0, gt.gt_classes[0]] = 1.0
            class_losses.append(F.binary_cross_entropy_with_logits(image_logits, target_logits))
        loss_box = torch.stack(box_losses).mean() if box_losses else boxes.sum() * 0.0
        return {"loss_class": torch.stack(class_losses).mean(), "loss_bbox": 5.0 * loss_box}

    def inference(self, batched_inputs, logits, boxes):
        results = []
        for x, image_logits, image_boxes in zip(batched_inputs, logits, boxes):
            height, width = x.get("height", x["image"].shape[-2]), x.get("width", x["image"].shape[-1])
            scores, classes = image_logits.sigmoid().max(-1)
            x0, y0, bw, bh = image_boxes.unbind(-1)
            xyxy = torch.stack([x0 * width, y0 * height, (x0 + bw) * width, (y0 + bh) * height], -1)
            instances = Instances((height, width))
            instances.pred_boxes = Boxes(xyxy)
            instances.scores = scores
            instances.pred_classes = classes
            results.append({"instances": instances})
        return results


def write_toy_coco(root, num_images=8, height=48, width=64, seed=0, bad_image=False):
    """Writes ``num_images`` PNGs (one bright rectangle on noise each) and a COCO json; returns (json, image_root).
    With ``bad_image`` the last file holds bytes that are not an image."""
    rng = np.random.RandomState(seed)
    image_root = os.path.join(root, "images")
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        pixels = rng.randint(0, 60, size=(height, width, 3)).astype(np.uint8)
        bw, bh = rng.randint(12, width // 2), rng.randint(10, height // 2)
        x0, y0 = rng.randint(0, width - bw), rng.randint(0, height - bh)
        pixels[y0 : y0 + bh, x0 : x0 + bw] = 220
        file_name = f"toy_{index:03d}.png"
        path = os.path.join(image_root, file_name)
        if bad_image and index == num_images - 1:
            with open(path, "wb") as f:
                f.write(b"this is not a png")
        else:
            Image.fromarray(pixels).save(path)
        images.append({"id": index + 1, "file_name": file_name, "height": height, "width": width})
        annotations.append(
            {"id": index + 1, "image_id": index + 1, "category_id": 1, "bbox": [x0, y0, bw, bh], "area": bw * bh, "iscrowd": 0}
        )
    json_file = os.path.join(root, "toy.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}, f)
    return json_file, image_root


class FailingOnCall:
    """A mapper that fails on its ``call``-th call (1-based) in the process of rank ``rank`` and maps with
    ``mapper`` otherwise: ``how="unreadable"`` raises as an unreadable image does (a corrupt file met mid-run by one
    process of several); ``how="refused"`` raises as a readable image of another size than its dataset record does;
    ``how="killed"`` kills the process it runs in with SIGKILL, as the out-of-memory killer does (use it with
    data-loading workers: in the training process itself it ends the run)."""

    def __init__(self, mapper, rank, call, how="unreadable"):
        if how not in ("unreadable", "refused", "killed"):
            raise ValueError(f"how must be 'unreadable', 'refused' or 'killed', got {how!r}")
        self.mapper, self.rank, self.call, self.how = mapper, rank, call, how
        self.calls = 0
        self.process_rank = comm.get_rank()  # built in each training process; a worker may not know its rank

    def __call__(self, dataset_dict):
        self.calls += 1
        if self.process_rank == self.rank and self.calls == self.call:
            if self.how == "killed":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.how == "refused":
                raise ValueError(f"image {dataset_dict['file_name']} is 10x10 pixels (width x height) but the dataset "
                                 "gives width 20 and height 20")
            raise UnreadableImageError(f"cannot read image {dataset_dict['file_name']}: image file is truncated")
        return self.mapper(dataset_dict)


def register_toy_dataset(name, root, **kwargs):
    """Writes the toy data under ``root`` and registers it as ``name`` (re-registering replaces it)."""
    json_file, image_root = write_toy_coco(root, **kwargs)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        from detectron2.data import MetadataCatalog

        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_file, image_root)
    return name


def register_edited_toy_dataset(name, root, edit):
    """:func:`register_toy_dataset` with 3 images, its json changed in place by ``edit(coco_dict)``; returns the
    json's path."""
    register_toy_dataset(name, root, num_images=3)
    json_file = os.path.join(root, "toy.json")
    with open(json_file) as f:
        coco = json.load(f)
    edit(coco)
    with open(json_file, "w") as f:
        json.dump(coco, f)
    return json_file

