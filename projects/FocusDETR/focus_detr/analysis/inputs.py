"""Model inputs for analysis tools: one synthetic image of a given size, or the first images of a dataset."""
import itertools

import torch
from detectron2.structures import Boxes, Instances

from ..engine.test_set import build_loader

__all__ = ["synthetic_inputs", "synthetic_training_batch", "dataset_inputs"]


def synthetic_inputs(height, width, count=1, seed=0):
    """``count`` input dicts holding uniformly random uint8 images ``(3, height, width)`` (no resizing applied)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"input size must be positive, got {height}x{width}")
    generator = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator), "height": height, "width": width}
        for _ in range(count)
    ]


def synthetic_training_batch(height, width, batch_size, num_boxes, num_classes, seed=0):
    """:func:`synthetic_inputs` with ``num_boxes`` random boxes each (classes < ``num_classes``) as ``instances``, as
    a training dataset mapper would deliver them."""
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for item in synthetic_inputs(height, width, batch_size, seed=seed):
        xy = torch.rand(num_boxes, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
        wh = (torch.rand(num_boxes, 2, generator=generator) * 0.25 + 0.05) * torch.tensor([width, height])
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        instances.gt_classes = torch.randint(0, num_classes, (num_boxes,), generator=generator)
        batch.append({**item, "instances": instances})
    return batch


def dataset_inputs(cfg, count):
    """The first ``count`` input dicts of ``cfg.dataloader.test`` (resized by its mapper, batch 1 each)."""
    if count <= 0:
        raise ValueError(f"the number of inputs must be positive, got {count}")
    loader = build_loader(cfg, "test")
    inputs = []
    for batch in itertools.islice(loader, count):
        inputs.extend(batch)
    return inputs[:count]
