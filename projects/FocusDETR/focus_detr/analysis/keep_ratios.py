"""Changing the foreground / cascade keep ratios of a built model for evaluation (no retraining needed)."""
import contextlib

__all__ = ["foreground_selector_of", "keep_ratios_applied", "dense_keep_ratios"]


def foreground_selector_of(model):
    """The model's ``transformer.foreground_selector`` (DDP / tracing wrappers unwrapped)."""
    model = getattr(model, "module", model)
    try:
        return model.transformer.foreground_selector
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no transformer.foreground_selector: not a Focus-DETR model") from None


def _check(keep_ratio, cascade_keep_ratios, num_layers):
    if keep_ratio is not None and not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    if cascade_keep_ratios is not None:
        if len(cascade_keep_ratios) != num_layers:
            raise ValueError(
                f"cascade_keep_ratios needs one entry per encoder layer ({num_layers}), got {list(cascade_keep_ratios)}"
            )
        if not all(0.0 < r <= 1.0 for r in cascade_keep_ratios):
            raise ValueError(f"cascade_keep_ratios must all be in (0, 1], got {list(cascade_keep_ratios)}")


def dense_keep_ratios(model):
    """(1.0, [1.0] * num_layers): every token updated by every encoder layer (a dense, DINO-like encoder)."""
    return 1.0, [1.0] * len(foreground_selector_of(model).cascade_keep_ratios)


@contextlib.contextmanager
def keep_ratios_applied(model, keep_ratio=None, cascade_keep_ratios=None):
    """Temporarily sets the selector's ``keep_ratio`` and/or ``cascade_keep_ratios`` (None keeps the current one)."""
    selector = foreground_selector_of(model)
    _check(keep_ratio, cascade_keep_ratios, len(selector.cascade_keep_ratios))
    saved = selector.keep_ratio, selector.cascade_keep_ratios
    if keep_ratio is not None:
        selector.keep_ratio = float(keep_ratio)
    if cascade_keep_ratios is not None:
        selector.cascade_keep_ratios = [float(r) for r in cascade_keep_ratios]
    try:
        yield selector
    finally:
        selector.keep_ratio, selector.cascade_keep_ratios = saved
