"""The channel mapper neck: projects backbone levels to one width and adds coarser levels by strided convolution."""
import copy
from typing import Dict, List

import torch
from detectron2.layers import ShapeSpec
from torch import nn


class ConvNorm(nn.Module):
    """Conv2d followed by an optional normalisation layer (no activation)."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module = None):
        super().__init__()
        self.conv = conv
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.norm(x) if self.norm is not None else x


class ChannelMapper(nn.Module):
    """Maps the backbone's ``in_features`` to ``out_channels`` each, then adds ``num_outs - len(in_features)`` extra
    levels, each a 3x3 stride-2 convolution; the first extra level reads the raw last backbone feature.

    Args:
        input_shapes: backbone output shapes by feature name (only ``channels`` is used).
        in_features: backbone features to map, finest first.
        out_channels: width of every output level.
        num_outs: number of output levels, >= ``len(in_features)``.
        kernel_size: kernel of the mapping convolutions.
        norm_layer: a normalisation module (e.g. ``nn.GroupNorm(32, 256)``), deep-copied per level; None for none.
    """

    def __init__(
        self,
        input_shapes: Dict[str, ShapeSpec],
        in_features: List[str],
        out_channels: int = 256,
        num_outs: int = 4,
        kernel_size: int = 1,
        norm_layer: nn.Module = None,
    ):
        super().__init__()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(f"ChannelMapper: in_features {missing} have no entry in input_shapes {list(input_shapes)}")
        if num_outs < len(in_features):
            raise ValueError(f"ChannelMapper: num_outs ({num_outs}) < number of in_features ({len(in_features)})")
        if kernel_size < 1 or kernel_size % 2 == 0:  # an even kernel shifts and shrinks the maps; 0 divided by zero
            raise ValueError(f"ChannelMapper: kernel_size must be a positive odd number (the maps keep their size), got "
                             f"{kernel_size}")
        self.in_features = list(in_features)
        self.out_channels = out_channels

        def norm():
            return None if norm_layer is None else copy.deepcopy(norm_layer)

        self.convs = nn.ModuleList(
            ConvNorm(
                nn.Conv2d(input_shapes[f].channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2),
                norm(),
            )
            for f in in_features
        )
        extra_in = [input_shapes[in_features[-1]].channels] + [out_channels] * (num_outs - len(in_features) - 1)
        self.extra_convs = nn.ModuleList(
            ConvNorm(nn.Conv2d(c, out_channels, 3, stride=2, padding=1), norm())
            for c in extra_in[: num_outs - len(in_features)]
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight, gain=1)
                nn.init.constant_(module.bias, 0)

    def forward(self, features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """features: name -> ``(B, C_in, H, W)``. Returns ``num_outs`` maps ``(B, out_channels, H_l, W_l)``, finest first."""
        outs = [conv(features[f]) for conv, f in zip(self.convs, self.in_features)]
        x = features[self.in_features[-1]]
        for conv in self.extra_convs:
            x = conv(x)
            outs.append(x)
        return outs

