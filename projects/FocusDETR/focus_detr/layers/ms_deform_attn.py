"""Multi-scale deformable attention (MSDA): the op, its backends, and the attention module.

Shapes (B batch, S value tokens over all levels, H heads, C channels per head, Q queries, L levels, P points):
    value               (B, S, H, C)
    spatial_shapes      (L, 2) integer, (h_l, w_l) per level; sum(h_l * w_l) == S
    level_start_index   (L,) integer, exclusive cumulative sum of h_l * w_l
    sampling_locations  (B, Q, H, L, P, 2) normalised (x, y); 0 and 1 are the outer borders of the map
    attention_weights   (B, Q, H, L, P)
    output              (B, Q, H * C), head-major channels (head h owns channels h*C .. h*C + C - 1)

Sampling is bilinear with zero padding and pixel centres at ``(i + 0.5) / size`` -- exactly
``F.grid_sample(..., mode="bilinear", padding_mode="zeros", align_corners=False)``.

Backends (see :func:`available_backends`, :func:`select_backend`):
    ``pytorch``  the reference (:func:`multi_scale_deformable_attention_pytorch`): any device/dtype, differentiable;
    ``cpu``      compiled C++ kernel (float32/float64 CPU tensors);
    ``cuda``     compiled CUDA kernel (float32/float16/bfloat16/float64 CUDA tensors; float32 accumulation,
                 float64 for float64).
Automatic choice: the compiled kernel for the tensor's device when it supports the dtype, else the reference (with a
one-time log message). ``backend=`` or the environment variable ``FOCUS_DETR_MSDA_BACKEND`` forces one; a forced
backend that cannot run raises ``RuntimeError`` instead of falling back.

The compiled kernels run inside one ``torch.library`` custom op (``focus_detr::ms_deform_attn``) with a registered
autograd formula and fake implementation, so ``torch.compile`` and ``torch.jit.trace`` see a single node. Under
``torch.jit.trace`` and ``torch.compile`` the reference also runs through that op, so FLOP counting
(``focus_detr.analysis.flop_handles``) sees the same graph whatever the backend.

Numerics: the kernels compute pixel coordinates as ``loc * size - 0.5``, grid_sample as ``((2 * loc - 1) + 1) * size
/ 2 - 0.5`` after rounding ``2 * loc - 1``; in float32 this moves sampling points by ~1e-5 px, so kernel and reference
agree to ~1e-5 (float64: ~1e-15). The CPU kernel is deterministic (its backward too, for any thread count); the CUDA
forward is deterministic, its backward scatters ``grad_value`` with atomics (flagged to
``torch.use_deterministic_algorithms``). Double backward is available on the plain reference path only.
"""
import functools
import logging
import math
import os
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from focus_detr.layers import _C
except ImportError as _import_error:  # the extension was not built: the reference still works
    _C = None
    _C_IMPORT_ERROR = repr(_import_error)
else:
    _C_IMPORT_ERROR = None

__all__ = [
    "BACKEND_ENV_VAR",
    "MultiScaleDeformableAttention",
    "available_backends",
    "extension_status",
    "multi_scale_deformable_attention",
    "multi_scale_deformable_attention_pytorch",
    "select_backend",
]

logger = logging.getLogger(__name__)

BACKEND_ENV_VAR = "FOCUS_DETR_MSDA_BACKEND"
BACKENDS = ("pytorch", "cpu", "cuda")
OP_NAME = "focus_detr::ms_deform_attn"

_CPU_KERNEL_DTYPES = (torch.float32, torch.float64)
_CUDA_KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_REDUCED_PRECISION = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------------------
def multi_scale_deformable_attention_pytorch(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int = 64,
) -> Tensor:
    """Reference MSDA with ``grid_sample``; shapes in the module docstring. Returns ``(B, Q, H * C)``.

    Numerically identical (same operations, same order) to the official ``multi_scale_deform_attn_pytorch``.
    ``level_start_index`` and ``im2col_step`` are unused (levels are split by ``spatial_shapes``); they are accepted
    so every backend has one signature. Mixed precision (e.g. float16 value with float32 locations) is computed in the
    promoted dtype and returned in ``value``'s dtype. Reads ``spatial_shapes`` on the host (a sync if on a GPU).
    """
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    out_dtype = value.dtype
    compute_dtype = torch.promote_types(
        torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype
    )
    value = value.to(compute_dtype)
    sampling_locations = sampling_locations.to(compute_dtype)
    attention_weights = attention_weights.to(compute_dtype)
    if batch == 0 or num_queries == 0 or num_heads == 0 or head_dim == 0:
        # Keeps the graph connected so backward yields zero gradients instead of "does not require grad".
        empty = value.new_zeros((batch, num_queries, num_heads * head_dim))
        touch = value.sum() + sampling_locations.sum() + attention_weights.sum()
        return (empty + 0 * touch).to(out_dtype)

    level_sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_list = value.split(level_sizes, dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampled_per_level = []
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        # (B, h*w, H, C) -> (B*H, C, h, w)
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(batch * num_heads, head_dim, height, width)
        # (B, Q, H, P, 2) -> (B*H, Q, P, 2)
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # (B*H, C, Q, P)
        sampled_per_level.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (B, Q, H, L, P) -> (B*H, 1, Q, L*P)
    weights = attention_weights.transpose(1, 2).reshape(batch * num_heads, 1, num_queries, num_levels * num_points)
    output = (torch.stack(sampled_per_level, dim=-2).flatten(-2) * weights).sum(-1)
    output = output.reshape(batch, num_heads * head_dim, num_queries)
    return output.transpose(1, 2).contiguous().to(out_dtype)


# ----------------------------------------------------------------------------------------------------------------
# Backend selection
# ----------------------------------------------------------------------------------------------------------------
def _cuda_kernel_compiled() -> bool:
    return _C is not None and bool(_C.has_cuda())


def available_backends(device: Optional[torch.device] = None) -> List[str]:
    """Backends that can run in this process (for ``device`` when given, e.g. ``"cpu"`` / ``"cuda:0"``)."""
    device_type = None if device is None else torch.device(device).type
    names = ["pytorch"]
    if _C is not None and device_type in (None, "cpu"):
        names.append("cpu")
    if _cuda_kernel_compiled() and torch.cuda.is_available() and device_type in (None, "cuda"):
        names.append("cuda")
    return names


def extension_status() -> str:
    """Human-readable state of the compiled extension (why a kernel backend is missing)."""
    if _C is None:
        return f"focus_detr.layers._C not importable ({_C_IMPORT_ERROR}); only the pytorch reference is available"
    cuda = "with" if _C.has_cuda() else "without"
    return f"focus_detr.layers._C loaded ({cuda} the CUDA kernel)"


def _kernel_unavailable_reason(backend: str, value: Tensor) -> Optional[str]:
    if backend == "pytorch":
        return None
    if _C is None:
        return extension_status()
    if backend == "cpu":
        if value.device.type != "cpu":
            return f"value is on {value.device}, the cpu kernel needs CPU tensors"
        if value.dtype not in _CPU_KERNEL_DTYPES:
            return f"the cpu kernel supports float32/float64, value is {value.dtype}"
        return None
    if backend == "cuda":
        if not _C.has_cuda():
            return "focus_detr.layers._C was built without the CUDA kernel (no nvcc at install time)"
        if value.device.type != "cuda":
            return f"value is on {value.device}, the cuda kernel needs CUDA tensors"
        if value.dtype not in _CUDA_KERNEL_DTYPES:
            return f"the cuda kernel does not support {value.dtype}"
        return None
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


@functools.lru_cache(maxsize=None)
def _log_fallback_once(device_type: str, dtype: torch.dtype, reason: str) -> None:
    logger.warning("MSDA on %s/%s uses the pytorch reference: %s", device_type, dtype, reason)


def select_backend(value: Tensor, backend: Optional[str] = None) -> str:
    """The backend that runs for ``value``: ``backend`` if given, else ``$FOCUS_DETR_MSDA_BACKEND``, else automatic.

    Raises ``RuntimeError`` if a requested backend cannot run on ``value`` (never a silent fallback).
    """
    requested = backend if backend is not None else (os.environ.get(BACKEND_ENV_VAR) or None)
    if requested is not None:
        requested = requested.strip().lower()
        if requested not in BACKENDS:
            raise ValueError(f"MSDA backend must be one of {BACKENDS}, got {requested!r}")
        reason = _kernel_unavailable_reason(requested, value)
        if reason is not None:
            raise RuntimeError(f"MSDA backend {requested!r} was requested but cannot run: {reason}")
        return requested
    native = value.device.type if value.device.type in ("cpu", "cuda") else None
    if native is None:
        return "pytorch"
    reason = _kernel_unavailable_reason(native, value)
    if reason is None:
        return native
    _log_fallback_once(value.device.type, value.dtype, reason)
    return "pytorch"


# ----------------------------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------------------------
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


def _check_level_layout(spatial_shapes: Tensor, level_start_index: Tensor, num_values: int) -> None:
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


# ----------------------------------------------------------------------------------------------------------------
# Custom op: one graph node for every backend
# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
# Public functional op
# ----------------------------------------------------------------------------------------------------------------
def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int = 64,
    backend: Optional[str] = None,
) -> Tensor:
    """MSDA on the best available backend; shapes in the module docstring. Returns ``(B, Q, H * C)`` in value's dtype.

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
    return _msda_op(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, chosen)


# ----------------------------------------------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------------------------------------------
class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention of queries over a multi-level feature pyramid (Deformable-DETR / detrex semantics).

    Parameter names, shapes and initialisation follow the official module, so official checkpoints load unchanged:
    ``sampling_offsets`` Linear(E, H*L*P*2), ``attention_weights`` Linear(E, H*L*P), ``value_proj`` Linear(E, E),
    ``output_proj`` Linear(E, E).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.0,
        im2col_step: int = 64,
        backend: Optional[str] = None,
    ):
        """
        Args:
            embed_dim: E, channels of query and value; must be divisible by ``num_heads``.
            num_heads, num_levels, num_points: H, L, P.
            dropout: dropout on the projected output (before the residual).
            im2col_step: forwarded to the op (compatibility only).
            backend: force an op backend (see :func:`select_backend`); None = env var / automatic.
        """
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if min(num_heads, num_levels, num_points) <= 0:
            raise ValueError(
                f"num_heads, num_levels, num_points must be positive, got {num_heads}, {num_levels}, {num_points}"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.im2col_step = im2col_step
        self.backend = backend
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official init; public so a model can re-apply it after a global xavier pass.

        Offsets start on a star: head h points along angle 2*pi*h/H (scaled to the unit square's border), point p at
        (p + 1) times that, same for every level. The bias is filled in place (the official code swaps in a new
        Parameter with the same values), so optimisers and the device/dtype of the module are kept.
        """
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        for point in range(self.num_points):
            grid[:, :, point, :] *= point + 1
        self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        value: Optional[Tensor],
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        query_pos: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
        identity: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: ``(B, Nq, E)``.
            value: ``(B, Nv, E)`` flattened pyramid (levels concatenated); None means ``query``.
            reference_points: ``(B, Nq, L, 2)`` normalised ``(x, y)`` points, or ``(B, Nq, L, 4)`` boxes
                ``(cx, cy, w, h)``; offsets are scaled by the level size resp. by half the box size / P.
            spatial_shapes: ``(L, 2)`` integer ``(h, w)``; level_start_index: ``(L,)``.
            query_pos: ``(B, Nq, E)`` added to ``query`` for offsets/weights only.
            key_padding_mask: ``(B, Nv)`` bool, True = padding; padded value tokens are zeroed.
            identity: residual, ``(B, Nq, E)``; defaults to ``query`` before ``query_pos`` is added.
        Returns:
            ``identity + dropout(output_proj(msda(...)))``, ``(B, Nq, E)``.
        """
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not torch.jit.is_tracing():
            self._check_forward_inputs(query, value, reference_points, spatial_shapes, key_padding_mask)
        batch, num_queries, _ = query.shape
        num_values = value.shape[1]
        heads, levels, points = self.num_heads, self.num_levels, self.num_points

        value = self.value_proj(value)
        if key_padding_mask is not None:
            # In place on the fresh projection (its backward does not read it): no second (B, Nv, E) buffer.
            value = value.masked_fill_(key_padding_mask[..., None], 0.0)
        value = value.view(batch, num_values, heads, self.embed_dim // heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by (w_l, h_l)
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(offsets.device)
            locations = (
                reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
            )
        else:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        output = multi_scale_deformable_attention(
            value.contiguous(),
            spatial_shapes,
            level_start_index,
            locations.contiguous(),
            weights.contiguous(),
            self.im2col_step,
            self.backend,
        )
        output = self.output_proj(output)
        return self.dropout(output) + identity

    def _check_forward_inputs(self, query, value, reference_points, spatial_shapes, key_padding_mask) -> None:
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"query must be (B, Nq, {self.embed_dim}), got {tuple(query.shape)}")
        if value.dim() != 3 or value.shape[-1] != self.embed_dim or value.shape[0] != query.shape[0]:
            raise ValueError(f"value must be (B={query.shape[0]}, Nv, {self.embed_dim}), got {tuple(value.shape)}")
        expected = (query.shape[0], query.shape[1], self.num_levels)
        if (
            reference_points.dim() != 4
            or tuple(reference_points.shape[:3]) != expected
            or reference_points.shape[-1] not in (2, 4)
        ):
            raise ValueError(
                f"reference_points must be {expected + (2,)} points or {expected + (4,)} boxes, "
                f"got {tuple(reference_points.shape)}"
            )
        if spatial_shapes.dim() != 2 or tuple(spatial_shapes.shape) != (self.num_levels, 2):
            raise ValueError(f"spatial_shapes must be ({self.num_levels}, 2), got {tuple(spatial_shapes.shape)}")
        if key_padding_mask is not None:
            if key_padding_mask.dtype != torch.bool:
                raise ValueError(f"key_padding_mask must be bool (True = padding), got {key_padding_mask.dtype}")
            if tuple(key_padding_mask.shape) != tuple(value.shape[:2]):
                raise ValueError(
                    f"key_padding_mask must be (B, Nv) = {tuple(value.shape[:2])}, got {tuple(key_padding_mask.shape)}"
                )

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_levels={self.num_levels}, "
            f"num_points={self.num_points}"
        )
