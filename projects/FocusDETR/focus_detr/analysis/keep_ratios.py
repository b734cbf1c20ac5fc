"""Changing the foreground / cascade keep ratios of a built model for evaluation (no retraining needed), the
settings of a keep-ratio sweep, and their latency timed interleaved."""
import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .timing import inference_call, time_interleaved

__all__ = [
    "KeepRatioSetting",
    "dense_keep_ratios",
    "foreground_selector_of",
    "interleaved_latencies",
    "keep_ratio_settings",
    "keep_ratios_applied",
]


def foreground_selector_of(model):
    """The model's ``transformer.foreground_selector`` (DDP / tracing wrappers unwrapped)."""
    model = getattr(model, "module", model)
    try:
        return model.transformer.foreground_selector
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no transformer.foreground_selector: not a Focus-DETR model") from None


def dense_keep_ratios(model):
    """(1.0, [1.0] * num_layers): every token updated by every encoder layer (a dense, DINO-like encoder)."""
    return 1.0, [1.0] * len(foreground_selector_of(model).cascade_keep_ratios)


@contextlib.contextmanager
def keep_ratios_applied(model, keep_ratio=None, cascade_keep_ratios=None):
    """Temporarily sets the selector's ``keep_ratio`` and/or ``cascade_keep_ratios`` (None keeps the current one)."""
    selector = foreground_selector_of(model)
    saved = selector.keep_ratio, selector.cascade_keep_ratios
    selector.set_keep_ratios(keep_ratio, cascade_keep_ratios)
    try:
        yield selector
    finally:
        selector.set_keep_ratios(*saved)


@dataclass(frozen=True)
class KeepRatioSetting:
    """One point of a sweep: a foreground keep ratio and the cascade ratios (one per encoder layer)."""

    name: str
    keep_ratio: float
    cascade_keep_ratios: Tuple[float, ...]

    def applied(self, model):
        return keep_ratios_applied(model, self.keep_ratio, list(self.cascade_keep_ratios))


def keep_ratio_settings(
    model, keep_ratios: Sequence[float], cascade: Optional[Sequence[float]] = None, dense: bool = True
) -> List[KeepRatioSetting]:
    """``keep k`` for each of ``keep_ratios`` with ``cascade`` (default: the model's), plus ``dense`` (every ratio
    1.0), sorted by keep ratio (then cascade ratios: the dense point after ``keep 1``). Each is checked against the
    model's selector now; a setting given twice is refused."""
    cascade = tuple(cascade if cascade is not None else foreground_selector_of(model).cascade_keep_ratios)
    settings = [KeepRatioSetting(f"keep {r:g}", float(r), tuple(float(c) for c in cascade)) for r in keep_ratios]
    if dense:
        keep_ratio, dense_cascade = dense_keep_ratios(model)
        settings.append(KeepRatioSetting("dense", keep_ratio, tuple(dense_cascade)))
    seen, named = {}, {}
    for setting in settings:
        key = (setting.keep_ratio, setting.cascade_keep_ratios)
        if key in seen:
            raise ValueError(f"keep-ratio sweep: {setting.name!r} and {seen[key]!r} are the same setting "
                             f"(keep {setting.keep_ratio:g}, cascade {list(setting.cascade_keep_ratios)})")
        if setting.name in named:  # one name, one row, one folder: the second's results replaced the first's
            raise ValueError(f"keep-ratio sweep: keep ratios {named[setting.name]!r} and {setting.keep_ratio!r} are "
                             f"both {setting.name!r}: give ratios that differ within 6 significant digits")
        seen[key], named[setting.name] = setting.name, setting.keep_ratio
        with setting.applied(model):  # a ratio outside (0, 1] or a wrong cascade length: one line now, not later
            pass
    return sorted(settings, key=lambda s: (s.keep_ratio, s.cascade_keep_ratios))


def interleaved_latencies(
    model, settings: Sequence[KeepRatioSetting], inputs, device, warmup: int, repeats: int, amp_dtype=None
) -> Dict[str, List[float]]:
    """Seconds per batch-1 inference of each setting over ``repeats`` rounds; each round runs every setting once
    in turn on the same image (timed round r: ``inputs[(warmup + r) % len(inputs)]``), so a busy or slow spell of the
    machine hits all settings alike. Returns setting name -> seconds per round."""
    calls = {}
    for setting in settings:
        run = inference_call(model, inputs, device, amp_dtype)

        def timed(setting=setting, run=run):
            with setting.applied(model):
                run()

        calls[setting.name] = timed
    return time_interleaved(calls, device, warmup, repeats)
