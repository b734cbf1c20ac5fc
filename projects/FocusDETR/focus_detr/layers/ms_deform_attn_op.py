"""The multi-scale deformable attention op: input checks, one ``torch.library`` custom op for every backend, and
the public functional :func:`multi_scale_deformable_attention`. Shapes in :mod:`focus_detr.layers.ms_deform_attn_reference`.

The compiled kernels run inside one custom op (``focus_detr::ms_deform_attn``) with a registered autograd formula and
fake implementation, so ``torch.compile`` and ``torch.jit.trace`` see a single node. Under ``torch.jit.trace`` and
``torch.compile`` the reference also runs through that op, so FLOP counting (``focus_detr.analysis.flop_handles``)
and ONNX export (``focus_detr.layers.ms_deform_attn_onnx``) see the same graph whatever the backend.

Numerics: the kernels compute pixel coordinates as ``loc * size - 0.5``, grid_sample as ``((2 * loc - 1) + 1) * size
/ 2 - 0.5`` after rounding ``2 * loc - 1``; in float32 this moves sampling points by ~1e-5 px, so kernel and reference
agree to ~1e-5 (float64: ~1e-15). The CPU kernel is deterministic (its backward too, for any thread count); the CUDA
forward is deterministic, its backward scatters ``grad_value`` with atomics (flagged to
``torch.use_deterministic_algorithms``). Double backward is available on the plain reference path only.
"""
import weakref
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from .ms_deform_attn_backends import _C, select_backend
from .ms_deform_attn_reference import multi_scale_deformable_attention_pytorch

__all__ = ["OP_NAME", "multi_scale_deformable_attention"]

OP_NAME = "focus_detr::ms_deform_attn"

_REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> None:
    """Raises ValueError naming the offending argument. Cheap: shape/dtype/device metadata only, plus the values of
    ``spatial_shapes`` / ``level_start_index`` when they live on the CPU (no device sync). On a GPU the kernels
    bound-check every read, so inconsistent shapes there cannot read outside ``value``."""
    named = (
        ("value", value, 4),
        ("spatial_shapes", spatial_shapes, 2),
        ("level_start_index", level_start_index, 1),
        ("sampling_locations", sampling_locations, 6),
        ("attention_weights", attention_weights, 5),
    )
    for name, tensor, rank in named:
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != rank:
            raise ValueError(f"{name} must have {rank} dims, got shape {tuple(tensor.shape)}")
    batch, _, num_heads, _ = value.shape
    num_levels = spatial_shapes.shape[0]
    if spatial_shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must be (L, 2), got {tuple(spatial_shapes.shape)}")
    if level_start_index.shape[0] != num_levels:
        raise ValueError(
            f"level_start_index must have L={num_levels} entries (one per spatial_shapes row), "
            f"got {level_start_index.shape[0]}"
        )
    loc_shape = sampling_locations.shape
    if loc_shape[0] != batch or loc_shape[2] != num_heads or loc_shape[3] != num_levels or loc_shape[5] != 2:
        raise ValueError(
            f"sampling_locations must be (B={batch}, Q, H={num_heads}, L={num_levels}, P, 2), got {tuple(loc_shape)}"
        )
    if attention_weights.shape != loc_shape[:-1]:
        raise ValueError(
            f"attention_weights must be {tuple(loc_shape[:-1])} (sampling_locations without the last dim), "
            f"got {tuple(attention_weights.shape)}"
        )
    for name, tensor in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got {tensor.dtype}")
        if tensor.device != value.device and tensor.device.type != "cpu":
            raise ValueError(f"{name} must be on value's device ({value.device}) or the CPU, got {tensor.device}")
    if not value.dtype.is_floating_point:
        raise ValueError(f"value must be a floating point tensor, got {value.dtype}")
    for name, tensor in (("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if tensor.device != value.device:
            raise ValueError(f"{name} is on {tensor.device} but value is on {value.device}")
        allowed = (value.dtype, torch.float32) if value.dtype in _REDUCED_PRECISION else (value.dtype,)
        if tensor.dtype not in allowed:
            raise ValueError(
                f"{name} has dtype {tensor.dtype} but value is {value.dtype}; expected one of "
                f"{[str(d) for d in allowed]} (float32 locations/weights are allowed with float16/bfloat16 value)"
            )
    for name, tensor in (
        ("value", value),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if not tensor.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous()), got strides {tensor.stride()}")
    if spatial_shapes.device.type == "cpu" and level_start_index.device.type == "cpu" and not _is_compiling():
        _check_level_layout(spatial_shapes, level_start_index, value.shape[1])


# Layouts already checked, per spatial_shapes tensor: a model passes the same layout tensors for every image of a size
# (focus_detr.modeling.token_layout), so their values are read once, not at every call. Entries leave with their
# tensors; an in-place change of either tensor (its version) has it checked again.
_CHECKED_LAYOUTS = WeakIdKeyDictionary()


def _check_level_layout(spatial_shapes: Tensor, level_start_index: Tensor, num_values: int) -> None:
    checked = _CHECKED_LAYOUTS.get(spatial_shapes)
    if checked is not None:
        version, start_index, start_index_version, values = checked
        # `is`, not `==`: a tensor's == is elementwise, and a value-equal new level_start_index is checked again
        if start_index() is level_start_index and (version, start_index_version, values) == (
            spatial_shapes._version, level_start_index._version, num_values
        ):
            return
    _read_and_check_level_layout(spatial_shapes, level_start_index, num_values)
    _CHECKED_LAYOUTS[spatial_shapes] = (
        spatial_shapes._version, weakref.ref(level_start_index), level_start_index._version, num_values
    )


def _read_and_check_level_layout(spatial_shapes: Tensor, level_start_index: Tensor, num_values: int) -> None:
    shapes = spatial_shapes.tolist()
    if any(h < 0 or w < 0 for h, w in shapes):
        raise ValueError(f"spatial_shapes must be non-negative, got {shapes}")
    sizes = [h * w for h, w in shapes]
    if sum(sizes) != num_values:
        raise ValueError(
            f"spatial_shapes {shapes} cover {sum(sizes)} tokens but value has {num_values} (dim 1 of value)"
        )
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    if level_start_index.tolist() != starts:
        raise ValueError(
            f"level_start_index must be the exclusive cumulative sum of h*w {starts}, got {level_start_index.tolist()}"
        )


def _reference_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output):
    # torch.func.vjp, not torch.autograd.grad: inside a custom op's kernel the autograd dispatch keys are excluded,
    # which enable_grad() cannot undo; functorch's transform re-enables them for its own level.
    def reference(v, loc, w):
        return multi_scale_deformable_attention_pytorch(v, spatial_shapes, level_start_index, loc, w)

    _, vjp = torch.func.vjp(reference, value, sampling_locations, attention_weights)
    return vjp(grad_output)


@torch.library.custom_op(OP_NAME, mutates_args=())
def _msda_op(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    backend: str,
) -> Tensor:
    if backend == "pytorch":
        with torch.no_grad():
            return multi_scale_deformable_attention_pytorch(
                value, spatial_shapes, level_start_index, sampling_locations, attention_weights
            )
    return _C.ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@_msda_op.register_fake
def _msda_op_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, backend):
    batch, _, num_heads, head_dim = value.shape
    return value.new_empty((batch, sampling_locations.shape[1], num_heads * head_dim))


@torch.library.custom_op(OP_NAME + "_backward", mutates_args=())
def _msda_backward_op(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    grad_output: Tensor,
    backend: str,
) -> Tuple[Tensor, Tensor, Tensor]:
    grad_output = grad_output.contiguous()
    if backend == "pytorch":
        grads = _reference_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output
        )
    else:
        grads = _C.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output
        )
    # Contiguous like the fake implementation says: compiled graphs rely on those strides.
    return tuple(
        g.to(t.dtype).contiguous() for g, t in zip(grads, (value, sampling_locations, attention_weights))
    )


@_msda_backward_op.register_fake
def _msda_backward_op_fake(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output, backend
):
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


def _msda_setup_context(ctx, inputs, output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, backend = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    ctx.backend = backend


def _msda_backward(ctx, grad_output):
    grad_value, grad_locations, grad_weights = _msda_backward_op(*ctx.saved_tensors, grad_output, ctx.backend)
    return grad_value, None, None, grad_locations, grad_weights, None


_msda_op.register_autograd(_msda_backward, setup_context=_msda_setup_context)


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int = 64,
    backend: Optional[str] = None,
) -> Tensor:
    """MSDA on the best available backend; shapes in :mod:`.ms_deform_attn_reference`. Returns ``(B, Q, H * C)`` in value's dtype.

    Args:
        value: ``(B, S, H, C)`` contiguous floating tensor.
        spatial_shapes: ``(L, 2)`` integer ``(h, w)`` per level, on value's device or the CPU (CPU tensors are
            validated against ``value`` without a device sync and copied to the device for the kernel).
        level_start_index: ``(L,)`` integer, same device rule.
        sampling_locations: ``(B, Q, H, L, P, 2)`` contiguous, normalised ``(x, y)``; value's dtype, or float32 when
            value is float16/bfloat16 (keeps sub-pixel precision on large maps).
        attention_weights: ``(B, Q, H, L, P)`` contiguous, same dtype rule.
        im2col_step: accepted for compatibility with the official signature; the kernels here need no im2col
            buffer, so it only has to be a positive int.
        backend: ``"pytorch"``, ``"cpu"``, ``"cuda"`` or ``None`` (``$FOCUS_DETR_MSDA_BACKEND``, else automatic).
    """
    if not torch.jit.is_tracing():  # a trace records no Python checks; skipping them avoids TracerWarnings
        _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if not isinstance(im2col_step, int) or im2col_step <= 0:
        raise ValueError(f"im2col_step must be a positive int, got {im2col_step!r}")
    chosen = select_backend(value, backend)
    if chosen == "pytorch" and not (torch.jit.is_tracing() or _is_compiling()):
        # Plain autograd through grid_sample: supports double backward and every dtype/device. Traces and
        # torch.compile take the custom op instead: one FLOP-countable node, and no data-dependent level sizes
        # (the reference reads spatial_shapes on the host) inside a compiled graph.
        return multi_scale_deformable_attention_pytorch(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    spatial_shapes = spatial_shapes.to(device=value.device, dtype=torch.int64, non_blocking=True).contiguous()
    level_start_index = level_start_index.to(device=value.device, dtype=torch.int64, non_blocking=True).contiguous()
    if chosen != "pytorch":
        # The kernels read locations/weights in the accumulation precision.
        coord_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
        sampling_locations = sampling_locations.to(coord_dtype)
        attention_weights = attention_weights.to(coord_dtype)
    # The CPU kernel accumulates in its input type: it samples a float16/bfloat16 value (autocast) from a float32
    # copy, one pass over (B, S, H, C) that is small next to the sampling and far faster than the reference.
    upcast = chosen == "cpu" and value.dtype in _REDUCED_PRECISION
    kernel_value = value.float() if upcast else value
    output = _msda_op(kernel_value, spatial_shapes, level_start_index, sampling_locations, attention_weights, chosen)
    return output.to(value.dtype)
