"""Folding of FrozenBatchNorm into the convolution before it.

A frozen batch norm is a per-channel affine map, so ``norm(conv(x, W, b))`` equals ``conv(x, W * s, b * s + t)``
with ``s = weight / sqrt(running_var + eps)`` and ``t = bias - running_mean * s``: one convolution instead of a
convolution and a full pass over its output (and, in training, without the norm's backward pass over the output's
gradient: the gradient of the trainable ``W`` flows through the weight-sized product ``W * s`` instead). The
module's own parameters and buffers stay as they are, so the state dict and checkpoints are unchanged.
"""
from typing import Tuple

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn import functional as F

__all__ = ["FrozenBNFoldingConv2d", "enable_frozen_bn_folding"]


class FrozenBNFoldingConv2d(Conv2d):
    """A detectron2 :class:`Conv2d` whose :class:`FrozenBatchNorm2d` is folded into its weights.

    Where the folded weights need no gradient (gradients disabled, or a frozen convolution) they are a cache beside
    the parameters, recomputed whenever a parameter or buffer they derive from changes (loading weights, ``.to()``,
    assigning ``.data``, in-place updates such as ``with torch.no_grad(): conv.weight.mul_(2)``). An in-place edit
    through ``.data`` (``conv.weight.data.mul_(2)``) bypasses the tensor's version counter and is not seen: edit
    under ``torch.no_grad()`` instead. Where they do (training a convolution), they are recomputed differentiably on
    every call, so the gradients of ``weight`` and ``bias`` equal those of convolution-then-norm up to float
    rounding. The cache is not pickled or deep-copied (``torch.save(model)``, the EMA's copy).
    """

    def _fold(self) -> Tuple[torch.Tensor, torch.Tensor]:
        norm = self.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        weight = self.weight * scale.view(-1, 1, 1, 1)
        bias = shift if self.bias is None else self.bias * scale + shift
        return weight, bias

    def _folded_parameters(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled() and (self.weight.requires_grad or getattr(self.bias, "requires_grad", False)):
            return self._fold()
        norm = self.norm
        sources = (self.weight, self.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
        # data_ptr catches replaced tensors (.to(), assignment), _version in-place updates (load_state_dict, copy_).
        key = tuple((t.data_ptr(), t._version) if t is not None else None for t in sources) + (norm.eps,)
        cache = self.__dict__.get("_folded_cache")
        if cache is None or cache[0] != key:
            # not inference tensors, even when made under inference_mode: a later call under grad (an input
            # gradient of a frozen backbone) saves them for its backward
            with torch.inference_mode(False), torch.no_grad():
                weight, bias = self._fold()
            cache = (key, weight, bias)
            # Kept out of the module's parameters and buffers (and so out of the state dict) on purpose.
            self.__dict__["_folded_cache"] = cache
        return cache[1], cache[2]

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_folded_cache", None)  # a second copy of the weights, derived from the saved ones
        return state

    def train(self, mode: bool = True):
        if mode and self.weight.requires_grad:
            # Training recomputes the fold on every call: do not hold a second set of weights through the cache.
            self.__dict__.pop("_folded_cache", None)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H', W')``."""
        weight, bias = self._folded_parameters()
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return self.activation(x) if self.activation is not None else x


def enable_frozen_bn_folding(module: nn.Module) -> int:
    """Makes every detectron2 ``Conv2d`` in ``module`` whose norm is a :class:`FrozenBatchNorm2d` fold it
    (in place; attributes, parameter names and the state dict stay as they are). Returns how many.

    Call it after the backbone's freezing (detectron2 converts BatchNorm to FrozenBatchNorm2d when it freezes a
    stage); convolutions with a trainable or another norm are left alone.
    """
    count = 0
    for child in module.modules():
        if type(child) is Conv2d and isinstance(child.norm, FrozenBatchNorm2d):
            # The same object under its subclass: nothing is copied, so references and hooks stay valid.
            child.__class__ = FrozenBNFoldingConv2d
            count += 1
    return count
