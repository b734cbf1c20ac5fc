"""The checks of detectron2-style model inputs: one line naming the input and the problem, where torch would fail deep
inside or, worse, detect without a word on pixels it misreads."""
import math
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


# Bounds of what a 0..255 float image can reach in a legitimate pipeline: resampling with a bicubic kernel overshoots
# near sharp edges (a 1-pixel checkerboard at 1.5x: -62..317), and detectron2's photometric augmentations leave float
# images unclipped (contrast and brightness 1.5: about -96..382).
_BRIGHTEST_OF_0_TO_255 = 2.0 * 255
_DARKEST_OF_0_TO_255 = -255.0
# Pixels centred on 0 (x - 128: -128..127) or mean/std normalised (torchvision's Normalize after to_tensor: about
# -2.2..2.7), told apart from a 0..255 image by their brightest pixel, which such an image far exceeds.
_CENTRED = (-64.0, 128.0)
_NORMALISED = (-0.5, 3.0)


def check_pixel_range(image: torch.Tensor, index: int) -> None:
    """ValueError (one line) when a float image is not one of 0..255 pixels, each of which the model would misread
    and detect next to nothing on without a word: pixels that are not finite; pixels centred on 0 or normalised
    already (darkest well below 0, brightest a fraction of 255); a 16-bit image or pixels far outside 0..255 (beyond
    what resampling and augmentations reach); fractional pixels all within (0, 1] (torchvision's ``to_tensor`` scale;
    a nearly black 0..255 image, whole values 0 and 1, passes). Float images only: a uint8 one is never read back (one
    device read per float image)."""
    if not image.numel():
        return
    darkest, brightest = torch.stack(torch.aminmax(image)).tolist()
    name = f"FocusDETR: batched_inputs[{index}]['image']"
    if not (math.isfinite(darkest) and math.isfinite(brightest)):
        raise ValueError(f"{name} has pixels that are not finite (NaN or infinite): a damaged or wrongly converted "
                         "image")
    for (below, at_most), what in ((_NORMALISED, "normalised already"), (_CENTRED, "centred on 0")):
        if darkest < below and brightest <= at_most:
            raise ValueError(f"{name} looks {what} (pixels {darkest:g}..{brightest:g}); the model takes pixels in "
                             "0..255 and normalises them itself (model.pixel_mean / pixel_std): pass the image before "
                             "normalising")
    if darkest < _DARKEST_OF_0_TO_255 or brightest > _BRIGHTEST_OF_0_TO_255:
        raise ValueError(f"{name} has pixels {darkest:g}..{brightest:g}; the model takes pixels in 0..255: scale the "
                         "image to 0..255 first (a 16-bit image: divide by 257)")
    if 0.0 < brightest <= 1.0 and bool((image != image.round()).any()):
        raise ValueError(f"{name} is a float image whose pixels all lie in 0..1 (brightest {brightest:g}); the model "
                         "takes pixels in 0..255: multiply by 255 (torchvision's to_tensor scales to 0..1), or pass "
                         "the uint8 image")
