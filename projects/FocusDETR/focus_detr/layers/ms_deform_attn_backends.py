"""Which implementation of multi-scale deformable attention runs: the compiled kernels and the reference.

Backends (see :func:`available_backends`, :func:`select_backend`):
    ``pytorch``  the reference (:func:`~focus_detr.layers.ms_deform_attn_reference.multi_scale_deformable_attention_pytorch`):
                 any device/dtype, differentiable;
    ``cpu``      compiled C++ kernel (float32/float64 CPU tensors; a float16/bfloat16 value, e.g. under autocast, is
                 sampled from a float32 copy and the result cast back);
    ``cuda``     compiled CUDA kernel (float32/float16/bfloat16/float64 CUDA tensors; float32 accumulation,
                 float64 for float64).
Automatic choice: the compiled kernel for the tensor's device when it supports the dtype, else the reference (with a
one-time log message). ``backend=`` or the environment variable ``FOCUS_DETR_MSDA_BACKEND`` forces one; a forced
backend that cannot run raises ``RuntimeError`` instead of falling back.
"""
import functools
import logging
import os
from typing import List, Optional

import torch
from torch import Tensor

try:
    from focus_detr.layers import _C
except ImportError as _import_error:  # the extension was not built: the reference still works
    _C = None
    _C_IMPORT_ERROR = repr(_import_error)
else:
    _C_IMPORT_ERROR = None

__all__ = ["BACKENDS", "BACKEND_ENV_VAR", "available_backends", "backend_summary", "check_backend_setting",
           "extension_status", "select_backend"]

logger = logging.getLogger(__name__)

BACKEND_ENV_VAR = "FOCUS_DETR_MSDA_BACKEND"
BACKENDS = ("pytorch", "cpu", "cuda")

_CPU_KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_CUDA_KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


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


def backend_summary(device) -> str:
    """One line for a run's log: the MSDA backend float32 inputs on ``device`` get, and who chose it. The backends'
    results differ in the last bits, so two runs compare only when they name the same one."""
    where = f"deformable attention (MSDA) on {torch.device(device).type}"
    try:
        backend = select_backend(torch.zeros(1, device=device))
    except (RuntimeError, ValueError) as error:  # refused where the attention runs, not for a model that never does
        return f"{where}: {error}"
    chosen = f"${BACKEND_ENV_VAR}={os.environ[BACKEND_ENV_VAR]}" if os.environ.get(BACKEND_ENV_VAR) else "automatic"
    return f"{where}: the {backend} backend ({chosen}); {extension_status()}"


def _kernel_unavailable_reason(backend: str, value: Tensor) -> Optional[str]:
    if backend == "pytorch":
        return None
    if _C is None:
        return extension_status()
    if backend == "cpu":
        if value.device.type != "cpu":
            return f"value is on {value.device}, the cpu kernel needs CPU tensors"
        if value.dtype not in _CPU_KERNEL_DTYPES:
            return f"the cpu kernel supports float32/float64/float16/bfloat16, value is {value.dtype}"
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


def check_backend_setting(device) -> None:
    """Raises, before a command's work, the ValueError that ``$FOCUS_DETR_MSDA_BACKEND`` would raise at the first
    forward on ``device``: a command that goes on after a failed input (the demo's next image) would meet it once per
    input, and name each input as the problem."""
    if os.environ.get(BACKEND_ENV_VAR):
        select_backend(torch.zeros(1, device=device))


def select_backend(value: Tensor, backend: Optional[str] = None) -> str:
    """The backend that runs for ``value``: ``backend`` if given, else ``$FOCUS_DETR_MSDA_BACKEND``, else automatic.

    Raises ``RuntimeError`` if a requested backend cannot run on ``value`` (never a silent fallback); a ValueError,
    the error of a user's setting (one line from the command line), when the environment variable requested it.
    """
    requested = backend if backend is not None else (os.environ.get(BACKEND_ENV_VAR) or None)
    if requested is not None:
        # a bad value from the environment is set far from the failing call: name where it came from
        source = "" if backend is not None else f" (from ${BACKEND_ENV_VAR}; unset it for the automatic choice)"
        requested = requested.strip().lower()
        if requested not in BACKENDS:
            raise ValueError(f"MSDA backend must be one of {BACKENDS}, got {requested!r}{source}")
        reason = _kernel_unavailable_reason(requested, value)
        if reason is not None:
            error = RuntimeError if backend is not None else ValueError
            raise error(f"MSDA backend {requested!r}{source} was requested but cannot run: {reason}")
        return requested
    native = value.device.type if value.device.type in ("cpu", "cuda") else None
    if native is None:
        return "pytorch"
    reason = _kernel_unavailable_reason(native, value)
    if reason is None:
        return native
    _log_fallback_once(value.device.type, value.dtype, reason)
    return "pytorch"
