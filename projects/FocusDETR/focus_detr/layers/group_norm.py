"""GroupNorm with a fast backward for channels-last CPU inputs.

PyTorch's forward is fast on a channels-last (NHWC) input, its backward is not: with one or a few channels per group
it runs 5-15x slower than on the same tensor in NCHW (2 x 32 x 88 x 88, 32 groups: 1.8 against 0.13 ms), and a
channels-last convolutional backbone with GroupNorm (the tree model) spent 20 ms of a 310 ms training step there;
under bfloat16 autocast, 70 ms of its 285 ms.
:class:`GroupNorm` computes that backward with the extension's kernel (``focus_detr.layers._C``); everywhere else
(other layouts and devices, no gradient, traces, ``torch.compile``, an extension built without the kernel) it is
``nn.GroupNorm`` itself. Parameters, state dict and forward outputs are those of ``nn.GroupNorm``; gradients agree
up to float rounding.
"""
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .ms_deform_attn_backends import _C

__all__ = ["GroupNorm", "use_channels_last_group_norm"]

_KERNEL = getattr(_C, "group_norm_channels_last_backward", None)


class _ChannelsLastGroupNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps):
        batch, channels, height, width = x.shape
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, batch, channels, height * width, num_groups,
                                                         eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.num_groups = num_groups
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x, weight, mean, rstd = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_x, grad_weight, grad_bias = _KERNEL(
            grad_output.contiguous(memory_format=torch.channels_last), x, mean.contiguous(), rstd.contiguous(),
            weight, ctx.num_groups, [needs_x, needs_weight, needs_bias],
        )
        return grad_x, grad_weight, grad_bias, None, None


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same arguments) whose backward on a channels-last CPU float tensor runs the extension's
    kernel: float32 / float64, or bfloat16 with float32 parameters (the convolutions' outputs under autocast,
    where the native backward is 2-11x slower than the kernel). Input ``(N, C, H, W)``."""

    def _kernel_applies(self, x: Tensor) -> bool:
        return (
            _KERNEL is not None
            and x.dim() == 4
            and x.device.type == "cpu"
            and self._dtypes_supported(x.dtype)
            and torch.is_grad_enabled()
            and (x.requires_grad or (self.affine and self.weight.requires_grad))
            # channels-last and not also plain contiguous (C == 1 or H * W == 1): only there is the native one slow
            and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous()
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
            and not torch.compiler.is_compiling()
        )

    def _dtypes_supported(self, dtype: torch.dtype) -> bool:
        # float32 / float64 with parameters of the same type; bfloat16 (autocast's convolution outputs) with
        # float32 parameters, for which native_group_norm returns float32 statistics
        if dtype in (torch.float32, torch.float64):
            return not self.affine or self.weight.dtype == dtype
        return dtype == torch.bfloat16 and self.affine and self.weight.dtype == torch.float32

    def forward(self, x: Tensor) -> Tensor:
        if self._kernel_applies(x):
            return _ChannelsLastGroupNormFunction.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        try:
            return super().forward(x)
        except ValueError as error:
            # torch's message ("Expected more than 1 value per channel when training", also in inference) names
            # neither the cause nor the fix
            if "more than 1 value per channel" not in str(error):
                raise
            raise ValueError("the image is too small for this model: a GroupNorm layer gets a single value per group "
                             "(a feature map of 1x1 pixels); use a larger image") from None


def use_channels_last_group_norm(module: nn.Module) -> nn.Module:
    """Replaces every ``nn.GroupNorm`` (exactly that class) inside ``module`` by a :class:`GroupNorm` holding the
    same parameters, so names and the state dict stay as they are. Returns ``module``."""
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.GroupNorm:
                replacement = GroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
                if child.affine:
                    replacement.weight, replacement.bias = child.weight, child.bias
                replacement.train(child.training)
                setattr(parent, name, replacement)
    return module
