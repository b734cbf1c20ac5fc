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
        selector.keep_ratio, selector.cascade_keep_ratios = saved
