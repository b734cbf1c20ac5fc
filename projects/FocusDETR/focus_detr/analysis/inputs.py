"""Model inputs for analysis tools: one synthetic image of a given size, or the first images of a dataset."""
import itertools

import torch
from detectron2.config import instantiate

__all__ = ["synthetic_inputs", "dataset_inputs"]


def synthetic_inputs(height, width, count=1, seed=0):
    """``count`` input dicts holding uniformly random uint8 images ``(3, height, width)`` (no resizing applied)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"input size must be positive, got {height}x{width}")
    generator = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator), "height": height, "width": width}
        for _ in range(count)
    ]


def dataset_inputs(cfg, count):
    """The first ``count`` input dicts of ``cfg.dataloader.test`` (resized by its mapper, batch 1 each)."""
    if count <= 0:
        raise ValueError(f"the number of inputs must be positive, got {count}")
    loader = instantiate(cfg.dataloader.test)
    inputs = []
    for batch in itertools.islice(loader, count):
        inputs.extend(batch)
    return inputs[:count]
