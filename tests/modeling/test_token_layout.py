"""The token layout's padding masks per level are F.interpolate's (nearest) in eager mode, as the released model's
are, and an exported graph computes the same masks (tests/export/test_batched_export.py)."""
import random

import torch
from torch.nn import functional as F

from focus_detr.modeling.token_layout import image_padding_masks, level_padding_masks


def test_level_masks_are_interpolates_nearest_resize_of_the_image_masks():
    rng = random.Random(0)
    for _ in range(100):
        height, width = rng.randint(1, 900), rng.randint(1, 900)
        sizes = [(rng.randint(1, height), rng.randint(1, width)) for _ in range(3)]
        image_masks = image_padding_masks((height, width), sizes, "cpu")
        # the backbone's strides, and any shape (a neck's extra level: 480 -> 8 rows, where ONNX's Resize differs)
        shapes = [(-(-height // s), -(-width // s)) for s in (8, 16, 32, 64)]
        shapes.append((rng.randint(1, 99), rng.randint(1, 99)))
        for shape, mask in zip(shapes, level_padding_masks(image_masks, shapes)):
            expected = F.interpolate(image_masks[None].float(), size=shape).to(torch.bool)[0]
            assert torch.equal(mask, expected), (height, width, sizes, shape)
    masks = image_padding_masks((480, 640), [(480, 640), (240, 320)], "cpu")
    assert (~level_padding_masks(masks, [(8, 10)])[0][1]).sum() == 4 * 5  # row 4 maps to pixel row 240: padding
