"""detectron2's Swin Transformer with its sizes kept as graph values while traced, so that an ONNX graph of a Swin
model runs at any input size and batch size.

detectron2's ``SwinTransformer`` turns sizes into Python numbers in a few places: the padded size and the regions
of the shifted-window attention mask (``np.ceil`` and slice loops), three ``if``\\ s on whether a size needs
padding (patch embedding, window attention, patch merging), and the batch size in ``window_reverse`` (``int()``).
Tracing records each as a constant, so its graph ran only at the size it was traced at. :class:`TraceableSwin` runs
the same submodules (the same weights and the same operations, hence the same numbers) with those computations
written as tensor operations on the traced sizes.
"""
import contextlib

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone.swin import SwinTransformer, window_partition
from torch import nn

__all__ = ["TraceableSwin", "traceable_backbone"]


def _pad_to_multiple(x: torch.Tensor, multiple: int, height_dim: int) -> torch.Tensor:
    """``x`` padded with zeros at the bottom / right until its sizes at ``height_dim`` and the dimension after it are
    multiples of ``multiple`` (a no-op when they are; the padding is computed from the traced sizes)."""
    height, width = x.shape[height_dim], x.shape[height_dim + 1]
    trailing = [0, 0] * (x.dim() - height_dim - 2)  # F.pad lists the last dimension first
    pad_width, pad_height = (multiple - width % multiple) % multiple, (multiple - height % multiple) % multiple
    return F.pad(x, trailing + [0, pad_width, 0, pad_height])


def _window_regions(length, window_size: int, shift_size: int, device) -> torch.Tensor:
    """``(length,)`` region index (0, 1, 2) of each position of a padded side: detectron2's three slices
    ``[0, -window)``, ``[-window, -shift)`` and ``[-shift, end)``."""
    position = torch.arange(length, device=device)
    return (position >= length - window_size).long() + (position >= length - shift_size).long()


def _shifted_window_mask(height, width, window_size: int, shift_size: int, device) -> torch.Tensor:
    """The attention mask of shifted windows over a ``height`` x ``width`` map: ``(num_windows, window_size**2,
    window_size**2)``, -100 between positions of different regions and 0 within one, as detectron2's ``BasicLayer``
    computes it (the regions' numbering, row region x 3 + column region, and the float32 arithmetic included)."""
    padded_height = (height + window_size - 1) // window_size * window_size
    padded_width = (width + window_size - 1) // window_size * window_size
    rows = _window_regions(padded_height, window_size, shift_size, device)
    columns = _window_regions(padded_width, window_size, shift_size, device)
    regions = (rows[:, None] * 3 + columns[None, :]).to(torch.float32)[None, :, :, None]  # (1, Hp, Wp, 1)
    windows = window_partition(regions, window_size).view(-1, window_size * window_size)
    differences = windows.unsqueeze(1) - windows.unsqueeze(2)
    return differences.masked_fill(differences != 0, -100.0).masked_fill(differences == 0, 0.0)


def _window_reverse(windows: torch.Tensor, window_size: int, height, width) -> torch.Tensor:
    """detectron2's ``window_reverse``: windows ``(B * num_windows, window_size, window_size, C)`` -> ``(B, height,
    width, C)``, with the batch size left to the reshape (detectron2 computes it with ``int()``, which tracing froze:
    a graph traced on a batch of two scrambled the features of every other batch size)."""
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, windows.shape[-1])
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, height, width, windows.shape[-1])


def _run_block(block: nn.Module, x: torch.Tensor, height, width, mask: torch.Tensor) -> torch.Tensor:
    """detectron2's ``SwinTransformerBlock.forward`` on ``x`` ``(B, height * width, C)``, cropping the window padding
    off whatever its size (the original crops only where the traced size was padded)."""
    batch, _, channels = x.shape
    window, shift = block.window_size, block.shift_size
    shortcut = x
    x = _pad_to_multiple(block.norm1(x).view(batch, height, width, channels), window, 1)
    padded_height, padded_width = x.shape[1], x.shape[2]
    if shift > 0:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    windows = window_partition(x, window).view(-1, window * window, channels)
    windows = block.attn(windows, mask=mask if shift > 0 else None)
    x = _window_reverse(windows.view(-1, window, window, channels), window, padded_height, padded_width)
    if shift > 0:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    x = x[:, :height, :width, :].contiguous().view(batch, height * width, channels)
    x = shortcut + block.drop_path(x)
    return x + block.drop_path(block.mlp(block.norm2(x)))


class TraceableSwin(nn.Module):
    """``swin`` (a detectron2 ``SwinTransformer``, in eval mode: no stochastic depth, no activation checkpointing)
    with a forward whose sizes stay graph values when traced; eagerly it returns exactly what ``swin`` returns.

    ``forward(images)``: ``(B, 3, H, W)`` -> ``{"p<i>": (B, C_i, H_i, W_i)}`` for ``swin.out_indices``.
    """

    def __init__(self, swin: SwinTransformer):
        super().__init__()
        if not isinstance(swin, SwinTransformer):
            raise TypeError(f"TraceableSwin wraps detectron2's SwinTransformer, got {type(swin).__name__}")
        self.swin = swin

    @property
    def size_divisibility(self) -> int:
        return self.swin.size_divisibility

    def output_shape(self):
        return self.swin.output_shape()

    def forward(self, images: torch.Tensor):
        swin = self.swin
        x = swin.patch_embed(_pad_to_multiple(images, swin.patch_embed.patch_size[0], 2))
        height, width = x.shape[2], x.shape[3]
        if swin.ape:
            x = x + F.interpolate(swin.absolute_pos_embed, size=(height, width), mode="bicubic")
        x = swin.pos_drop(x.flatten(2).transpose(1, 2))  # (B, H * W, C)
        outputs = {}
        for index, stage in enumerate(swin.layers):
            mask = _shifted_window_mask(height, width, stage.window_size, stage.shift_size, x.device)
            for block in stage.blocks:
                x = _run_block(block, x, height, width, mask)
            if index in swin.out_indices:
                features = getattr(swin, f"norm{index}")(x).view(-1, height, width, swin.num_features[index])
                outputs[f"p{index}"] = features.permute(0, 3, 1, 2).contiguous()
            if stage.downsample is not None:
                batch, _, channels = x.shape
                x = _pad_to_multiple(x.view(batch, height, width, channels), 2, 1)
                height, width = x.shape[1], x.shape[2]
                x = stage.downsample(x.view(batch, -1, channels), height, width)  # no padding left to add
                height, width = height // 2, width // 2
        return outputs


@contextlib.contextmanager
def traceable_backbone(model: nn.Module):
    """Inside, ``model.backbone`` is a :class:`TraceableSwin` of itself when it is detectron2's
    ``SwinTransformer`` (other backbones are left as they are); the backbone is put back afterwards, also on error."""
    backbone = model.backbone
    if isinstance(backbone, SwinTransformer):
        model.backbone = TraceableSwin(backbone)
    try:
        yield model
    finally:
        model.backbone = backbone
