"""Pictures of Focus-DETR's token selection (the paper's figure, for any image).

Input: the ``token_selection`` dict of ``FocusDETR.forward_inference(..., return_token_selection=True)``:
``spatial_shapes`` (L, 2), ``foreground_logits`` (N,) over all tokens (level-major, row-major per level),
``foreground_inds`` / ``fine_grained_inds``: per encoder layer, indices into the N tokens. Token (r, c) of level l
with spatial shape ``(h_l, w_l)`` covers a ``H / h_l`` x ``W / w_l`` cell of the padded network input ``(H, W)``, as
the model's reference points place it (:func:`~focus_detr.analysis.selection_quality.token_centres`): about its
nominal stride (8, 16, 32, 64 for the 4-level models), exactly that only where the stride divides ``H`` and ``W``.
"""
import numpy as np
import torch

from .selection_quality import token_centres

__all__ = ["level_grids", "foreground_heatmaps", "grid_to_image", "token_masks", "save_foreground_figure",
           "save_token_figure"]

KEPT_COLOR = (0.12, 0.47, 0.71)  # blue: updated by the encoder layer (foreground tokens)
FINE_COLOR = (0.89, 0.10, 0.11)  # red: fine-grained tokens (also in self-attention)


def _as_numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def level_grids(values, spatial_shapes):
    """Splits a per-token vector ``(N,)`` into one ``(H_l, W_l)`` grid per level."""
    values = _as_numpy(values)
    shapes = _as_numpy(spatial_shapes).astype(int)
    if values.shape[0] != int((shapes[:, 0] * shapes[:, 1]).sum()):
        raise ValueError(f"{values.shape[0]} token values do not match spatial_shapes {shapes.tolist()}")
    grids, start = [], 0
    for height, width in shapes:
        grids.append(values[start : start + height * width].reshape(height, width))
        start += height * width
    return grids


def foreground_heatmaps(token_selection):
    """Per level, sigmoid foreground probability ``(H_l, W_l)``."""
    probabilities = 1.0 / (1.0 + np.exp(-_as_numpy(token_selection["foreground_logits"]).astype(np.float64)))
    return level_grids(probabilities, token_selection["spatial_shapes"])


def token_masks(token_selection, layer):
    """Per level, an int grid ``(H_l, W_l)``: 0 not kept, 1 kept (foreground), 2 fine-grained, for one encoder layer."""
    shapes = _as_numpy(token_selection["spatial_shapes"]).astype(int)
    codes = np.zeros(int((shapes[:, 0] * shapes[:, 1]).sum()), dtype=np.int64)
    codes[_as_numpy(token_selection["foreground_inds"][layer]).astype(int)] = 1
    codes[_as_numpy(token_selection["fine_grained_inds"][layer]).astype(int)] = 2
    return level_grids(codes, shapes)


def _cells_of_pixels(extent: int, padded_extent: int, cells: int) -> np.ndarray:
    """For each of ``extent`` pixel rows (or columns) of the network input, the token row whose cell holds the
    pixel's centre (the nearest token centre)."""
    centres = token_centres(cells, padded_extent)
    return np.abs((np.arange(extent) + 0.5)[:, None] - centres[None, :]).argmin(1)


def grid_to_image(grid, image_size, padded_size=None):
    """A level's token grid ``(h_l, w_l)`` drawn on the pixels of the unpadded network input ``image_size``
    ``(h, w)``: each pixel shows the token whose cell of the padded input ``padded_size`` ``(H, W)`` (default: the
    image's own size, a batch of one) holds it."""
    height, width = image_size
    padded_height, padded_width = padded_size or image_size
    rows = _cells_of_pixels(height, padded_height, grid.shape[0])
    cols = _cells_of_pixels(width, padded_width, grid.shape[1])
    return grid[rows[:, None], cols[None, :]]


def _strides(num_levels, strides):
    strides = list(strides) if strides is not None else [8 * 2**level for level in range(num_levels)]
    if len(strides) != num_levels:
        raise ValueError(f"need one stride per level ({num_levels}), got {strides}")
    return strides


# A panel at most this many times wider than high (or higher than wide): a 2 x 2000 pixel image made a figure
# 585,772 pixels wide (80 s, 5 GB) that image viewers refuse. Such an image is drawn narrow inside its panel.
MAX_PANEL_ASPECT = 4.0


def _figure(rows, cols, panel_height=2.6, aspect=1.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aspect = min(max(aspect, 1 / MAX_PANEL_ASPECT), MAX_PANEL_ASPECT)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel_height * aspect + 0.4, rows * panel_height + 0.6),
                             squeeze=False)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    return plt, fig, axes


def save_foreground_figure(image, token_selection, path, strides=None, padded_size=None):
    """One panel per feature level: the foreground probability over the image. ``image`` (h, w, 3) uint8 RGB of the
    network input (the model output's ``image_size``); ``padded_size``: the output's ``padded_size``, the batch the
    tokens were computed on (default: the image's size); ``strides``: each level's, for the panel titles."""
    heatmaps = foreground_heatmaps(token_selection)
    strides = _strides(len(heatmaps), strides)
    image_size = image.shape[:2]
    plt, fig, axes = _figure(1, len(heatmaps), aspect=image_size[1] / image_size[0])
    for level, (axis, heatmap, stride) in enumerate(zip(axes[0], heatmaps, strides)):
        axis.imshow(image)
        shown = axis.imshow(grid_to_image(heatmap, image_size, padded_size), cmap="jet", alpha=0.5, vmin=0.0,
                            vmax=1.0)
        axis.set_title(f"level {level} (stride {stride})", fontsize=9)
    fig.colorbar(shown, ax=list(axes[0]), fraction=0.02, label="foreground probability")
    fig.suptitle("Foreground token selector: scores per level", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_token_figure(image, token_selection, path, strides=None, padded_size=None):
    """Rows: encoder layers; columns: feature levels. Blue: tokens the layer updates (kept foreground tokens);
    red: its fine-grained tokens (kept and also refined by self-attention). Arguments as
    :func:`save_foreground_figure`'s."""
    num_layers = len(token_selection["foreground_inds"])
    shapes = _as_numpy(token_selection["spatial_shapes"])
    strides = _strides(len(shapes), strides)
    image_size = image.shape[:2]
    plt, fig, axes = _figure(num_layers, len(shapes), aspect=image_size[1] / image_size[0])
    dimmed = (image.astype(np.float32) * 0.55).astype(np.uint8)
    for layer in range(num_layers):
        kept = len(token_selection["foreground_inds"][layer])
        fine = len(token_selection["fine_grained_inds"][layer])
        for level, (grid, stride) in enumerate(zip(token_masks(token_selection, layer), strides)):
            axis = axes[layer][level]
            codes = grid_to_image(grid, image_size, padded_size)
            overlay = np.zeros(image_size + (4,), dtype=np.float32)
            overlay[codes == 1] = KEPT_COLOR + (0.55,)
            overlay[codes == 2] = FINE_COLOR + (0.75,)
            axis.imshow(dimmed)
            axis.imshow(overlay)
            if layer == 0:
                axis.set_title(f"level {level} (stride {stride})", fontsize=9)
            if level == 0:
                axis.set_ylabel(f"layer {layer}\n{kept} kept / {fine} fine", fontsize=8)
    fig.suptitle("Encoder tokens per layer: blue = kept (updated), red = fine-grained", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
