"""The checks of detectron2-style model inputs: one line naming the input and the problem, where torch would fail deep
inside or, worse, detect without a word on pixels it misreads."""
import numbers

import torch

__all__ = ["check_batched_inputs", "check_pixel_range", "output_side"]


def check_batched_inputs(batched_inputs):
    """ValueError (one line) unless ``batched_inputs`` is detectron2's model input: a non-empty list of dicts (a
    dict, a tensor or an empty list failed deep inside with an AttributeError or ``max() arg is an empty sequence``;
    a generator would be used up by the first pass over it)."""
    expected = "a non-empty list of dicts, each with an 'image' (3, H, W) tensor (detectron2's model input)"
    if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
        got = "an empty list" if isinstance(batched_inputs, (list, tuple)) else type(batched_inputs).__name__
        raise ValueError(f"FocusDETR: batched_inputs must be {expected}, got {got}")
    for i, item in enumerate(batched_inputs):
        if not isinstance(item, dict):
            raise ValueError(
                f"FocusDETR: batched_inputs[{i}] must be a dict with an 'image', got {type(item).__name__}")


def output_side(item, key, index, default):
    """The ``height`` / ``width`` to rescale an input's detections to: its own when given (a positive integer; 0 or
    a negative size silently gave no detection), else ``default``."""
    value = item.get(key)
    if value is None:
        return default
    # detectron2 takes a whole float (a COCO json written as 345.0) and a one-element tensor as well
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    whole = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    if not whole or isinstance(value, bool) or value < 1:
        raise ValueError(f"FocusDETR: batched_inputs[{index}]['{key}'] must be a positive integer (the original "
                         f"image's size, which the boxes are rescaled to) or absent, got {value!r}")
    return int(value)


def check_pixel_range(image: torch.Tensor, index: int) -> None:
    """ValueError when a float image holds fractional pixels all within (0, 1]: torchvision's ``to_tensor`` scale,
    which the model would see as a black image (it takes 0..255), detecting next to nothing without a word. A nearly
    black 0..255 image (whole values 0 and 1) passes. Float images only: a uint8 one is never read back (one device
    read per float image)."""
    brightest = float(image.max()) if image.numel() else 0.0
    if 0.0 < brightest <= 1.0 and bool((image != image.round()).any()):
        raise ValueError(f"FocusDETR: batched_inputs[{index}]['image'] is a float image whose pixels all lie in 0..1 "
                         f"(brightest {brightest:g}); the model takes pixels in 0..255: multiply by 255 (torchvision's "
                         "to_tensor scales to 0..1), or pass the uint8 image")
