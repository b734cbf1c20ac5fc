"""The autocast settings of a config: ``train.amp`` for training steps and ``train.inference_amp`` for everything
that runs the model for predictions (``--eval-only``, the evaluation during training, the demo, the benchmark's
inference), each a ``dict(enabled=..., precision=...)`` checked with one-line errors. Off, the model runs in
float32, exactly as without these settings."""
import contextlib
import logging

import torch
from detectron2.utils.logger import log_first_n

__all__ = ["amp_autocast", "amp_dtype_of", "inference_amp_dtype", "resolve_amp_dtype", "training_amp_dtype"]

_PRECISIONS = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_amp_dtype(precision, device, key="train.amp.precision"):
    """``"auto"`` -> bfloat16 where the device computes it natively (CPU, CUDA with bf16 support) else float16;
    ``"bfloat16"``/``"bf16"``/``"float16"``/``"fp16"`` -> that dtype. ``key`` names the setting in the error."""
    if precision == "auto":
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if not isinstance(precision, str) or precision not in _PRECISIONS:
        raise ValueError(f"{key} must be one of auto, {', '.join(_PRECISIONS)}; got {precision!r}")
    return _PRECISIONS[precision]


def amp_dtype_of(amp, device, key):
    """The autocast dtype that an ``amp`` dict (``enabled``, ``precision``; None = off) asks for on ``device``, or
    None for float32. The precision is checked even when disabled, so a typo does not wait for the day it is
    switched on. ``key`` names the dict in errors (e.g. ``"train.inference_amp"``)."""
    amp = amp or {}
    enabled = amp.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ValueError(f"{key}.enabled must be True or False, got {enabled!r}")
    dtype = resolve_amp_dtype(amp.get("precision", "auto"), device, key=f"{key}.precision")
    if enabled and dtype == torch.float16 and torch.device(device).type == "cpu":
        # it runs, so nothing else would say why (once per process: every periodic evaluation asks again)
        log_first_n(logging.WARNING, f"{key}.precision float16 on the CPU is slower than float32, not faster (the "
                    "tree model's training step about 11x, its evaluation about 7x, on a 2-core x86 CPU): bfloat16 "
                    f"is the CPU's half precision ({key}.precision=bfloat16, or auto)", n=1, key="message")
    return dtype if enabled else None


def _train_section(cfg):
    return cfg.get("train", None) or {}


def training_amp_dtype(cfg, device):
    """``train.amp`` of ``cfg`` -> the training steps' autocast dtype, None = float32."""
    return amp_dtype_of(_train_section(cfg).get("amp", None), device, "train.amp")


def inference_amp_dtype(cfg, device):
    """``train.inference_amp`` of ``cfg`` (absent = off) -> the autocast dtype of inference, None = float32."""
    return amp_dtype_of(_train_section(cfg).get("inference_amp", None), device, "train.inference_amp")


def amp_autocast(device, amp_dtype):
    """Autocast to ``amp_dtype`` on ``device``'s type; None = a context that changes nothing."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=amp_dtype)
