"""Reading torchvision's ImageNet ResNet weights (``resnet50-0676ba61.pth``, ``resnet101-63fe2227.pth``, a
``torchvision.models.resnet*().state_dict()``) as the initial weights of detectron2's ResNet backbone.

The configs normalise images as these weights expect (RGB, ImageNet mean and std), and detectron2's ResNet with
``stride_in_1x1=False`` is torchvision's: each block's convolutions and batch norms are the same layers under other
names. torchvision's file keeps its classifier (``fc.*``), which the detector has no use for, and each batch norm's
``num_batches_tracked``, which detectron2's frozen batch norm does not have.
"""
import re
from typing import Dict

import torch

__all__ = ["is_torchvision_resnet", "torchvision_resnet_to_backbone"]

_STEM = re.compile(r"^(conv1|bn1)\.(.+)$")
# layer{1..4}.{block}.{conv,bn}{1..3}.* and layer{1..4}.{block}.downsample.{0,1}.*
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(?:(conv|bn)([1-3])|downsample\.([01]))\.(.+)$")
_DROPPED = re.compile(r"^fc\.|(^|\.)num_batches_tracked$")


def is_torchvision_resnet(state_dict: Dict[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` has torchvision's ResNet keys (its stem and first stage), and only keys of a ResNet."""
    return ("conv1.weight" in state_dict and "bn1.running_mean" in state_dict
            and any(key.startswith("layer1.0.") for key in state_dict)
            and all(_STEM.match(key) or _BLOCK.match(key) or _DROPPED.search(key) for key in state_dict))


def torchvision_resnet_to_backbone(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision's ResNet keys -> those of detectron2's ResNet as ``FocusDETR.backbone`` (``backbone.stem.conv1.*``,
    ``backbone.res{2..5}.{block}.conv{k}[.norm].*``, ``backbone.res{n}.0.shortcut[.norm].*``), less the classifier
    and the batch-norm counters."""
    converted = {}
    for key, value in state_dict.items():
        if _DROPPED.search(key):
            continue
        stem = _STEM.match(key)
        if stem:
            layer, rest = stem.groups()
            converted["backbone.stem.conv1." + ("" if layer == "conv1" else "norm.") + rest] = value
            continue
        stage, block, kind, index, downsample, rest = _BLOCK.match(key).groups()
        prefix = f"backbone.res{int(stage) + 1}.{block}."
        if downsample is not None:
            layer = "shortcut." + ("" if downsample == "0" else "norm.")
        else:
            layer = f"conv{index}." + ("" if kind == "conv" else "norm.")
        converted[prefix + layer + rest] = value
    return converted
