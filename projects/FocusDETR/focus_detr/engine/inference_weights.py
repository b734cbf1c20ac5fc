"""Which weights an evaluation or a prediction uses: a checkpoint's trained weights, or the EMA average it holds beside
them (ours or detrex's), as ``train.model_ema`` asks."""
import logging
from typing import List, NamedTuple, Optional

import torch

from .checkpoint import AtomicDetectionCheckpointer
from .checkpoint_classes import checkpoint_classes
from .hooks import EMAHook

__all__ = ["InferenceWeights", "check_finite_weights", "ema_settings", "load_inference_weights",
           "read_inference_weights"]

logger = logging.getLogger(__name__)

EMA_HOOK_KEY = EMAHook.__qualname__


def ema_settings(cfg):
    """``cfg.train.model_ema``'s (enabled, decay, use_for_eval), with the defaults of a config that lacks it."""
    ema = (cfg.get("train", None) or {}).get("model_ema", None) or {}
    return bool(ema.get("enabled", False)), float(ema.get("decay", 0.999)), bool(ema.get("use_for_eval", True))


def _ema_weights(extra):
    """The EMA weights a checkpoint holds beside its model (``extra``: what the checkpointer's ``load`` returns): ours
    (the EMA hook's state) or detrex's (its top-level ``ema_state``, in the official layout); None when it holds
    none."""
    if not extra:
        return None
    ours = (extra.get("trainer") or {}).get("hooks", {}).get(EMA_HOOK_KEY)
    if ours is not None:
        return ours["shadow"]
    detrex = extra.get("ema_state")
    return detrex if isinstance(detrex, dict) and detrex else None


class InferenceWeights(NamedTuple):
    """What :func:`read_inference_weights` loaded: which weights (``kind``: "ema", "trained" or "random") and the
    class names the checkpoint was trained on, in the order of the model's outputs (None when it records none)."""

    kind: str
    thing_classes: Optional[List[str]]


def load_inference_weights(model, cfg, path):
    """:func:`read_inference_weights`'s ``kind`` alone, for callers that pair the outputs with no class names."""
    return read_inference_weights(model, cfg, path).kind


def read_inference_weights(model, cfg, path) -> InferenceWeights:
    """Loads the weights file ``path`` into ``model`` (a DDP wrapper is unwrapped) without running code from it: our
    checkpoints, weights-only files, official detrex weights. When ``cfg.train.model_ema`` is enabled with
    ``use_for_eval``, the EMA weights a checkpoint carries replace the trained ones, as in evaluation during training.
    A file without detector weights (a backbone initialisation) is refused. An empty ``path`` loads nothing.

    Returns which weights the model now has ("ema", "trained" or "random": nothing loaded) and the class names the
    checkpoint records (:func:`~.checkpoint_classes.checkpoint_classes`), which a caller compares with the classes
    it names the outputs by."""
    checkpointer = AtomicDetectionCheckpointer(model, require_detector=True)
    extra = checkpointer.load(path)
    classes = checkpoint_classes(extra, path)
    ema_enabled, _, ema_for_eval = ema_settings(cfg)
    ema_weights = _ema_weights(extra)
    if ema_enabled and ema_for_eval and ema_weights is not None:
        logger.info("Using the EMA weights stored in the checkpoint")
        checkpointer.load_model_state(ema_weights, source=f"the EMA weights of {path}")
        return InferenceWeights("ema", classes)
    if ema_enabled and ema_for_eval and path:  # asked for, absent: say which weights the numbers are of
        logger.warning(f"train.model_ema asks for the EMA weights, but {path} holds none: using its trained weights")
    elif ema_weights is not None and not ema_enabled:  # (enabled with use_for_eval=False asks for the trained ones)
        logger.warning(f"{path} also holds the EMA weights (their average over its training): using its trained "
                       "weights; train.model_ema.enabled=True uses the average")
    return InferenceWeights("trained" if path else "random", classes)


def check_finite_weights(model, source):
    """ValueError (one line) naming the first parameter or buffer of ``model`` that holds a NaN or infinite value,
    and ``source``, the weights it came from ("the weights of <checkpoint>"; a diverged run's): PyTorch refuses its
    NaN boxes, while an exported graph drops them and finds nothing, without a word."""
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        more = f" (and {len(bad) - 1} more tensor{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        raise ValueError(f"{source} are not finite: {bad[0]} holds NaN or infinite values{more}; a run "
                         "that diverged saves such weights: use a checkpoint from before it diverged")
