"""The reference multi-scale deformable attention (MSDA) in plain PyTorch: any device and dtype, differentiable.

Shapes (B batch, S value tokens over all levels, H heads, C channels per head, Q queries, L levels, P points):
    value               (B, S, H, C)
    spatial_shapes      (L, 2) integer, (h_l, w_l) per level; sum(h_l * w_l) == S
    level_start_index   (L,) integer, exclusive cumulative sum of h_l * w_l
    sampling_locations  (B, Q, H, L, P, 2) normalised (x, y); 0 and 1 are the outer borders of the map
    attention_weights   (B, Q, H, L, P)
    output              (B, Q, H * C), head-major channels (head h owns channels h*C .. h*C + C - 1)

Sampling is bilinear with zero padding and pixel centres at ``(i + 0.5) / size`` -- exactly
``F.grid_sample(..., mode="bilinear", padding_mode="zeros", align_corners=False)``. Every backend
(:mod:`focus_detr.layers.ms_deform_attn_backends`) computes this function for finite locations, with two
differences of the compiled kernels, whose bounds test is the official CUDA kernel's (``-1 < x < w`` in pixels):
a NaN or infinite location samples nothing there (zero output and gradients; here it gives NaN), and the location
gradient at exactly ``x = -1`` (or ``y = -1``) pixel is 0 there, the one-sided derivative here.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["multi_scale_deformable_attention_pytorch"]


def multi_scale_deformable_attention_pytorch(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int = 64,
) -> Tensor:
    """Reference MSDA with ``grid_sample``; shapes in the module docstring. Returns ``(B, Q, H * C)``.

    Numerically identical (same operations, same order) to the official ``multi_scale_deform_attn_pytorch``.
    ``level_start_index`` and ``im2col_step`` are unused (levels are split by ``spatial_shapes``); they are accepted
    so every backend has one signature. Mixed precision (e.g. float16 value with float32 locations) is computed in the
    promoted dtype and returned in ``value``'s dtype. Reads ``spatial_shapes`` on the host (a sync if on a GPU).
    """
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    out_dtype = value.dtype
    compute_dtype = torch.promote_types(
        torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype
    )
    value = value.to(compute_dtype)
    sampling_locations = sampling_locations.to(compute_dtype)
    attention_weights = attention_weights.to(compute_dtype)
    if batch == 0 or num_queries == 0 or num_heads == 0 or head_dim == 0 or num_levels == 0:
        # Keeps the graph connected so backward yields zero gradients instead of "does not require grad".
        empty = value.new_zeros((batch, num_queries, num_heads * head_dim))
        touch = value.sum() + sampling_locations.sum() + attention_weights.sum()
        return (empty + 0 * touch).to(out_dtype)

    level_sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_list = value.split(level_sizes, dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampled_per_level = []
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        # (B, h*w, H, C) -> (B*H, C, h, w)
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(batch * num_heads, head_dim, height, width)
        # (B, Q, H, P, 2) -> (B*H, Q, P, 2)
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        if height * width == 0:  # an empty level samples nothing, as in the kernels (grid_sample refuses it)
            sampled_per_level.append(value_l.new_zeros(batch * num_heads, head_dim, num_queries, num_points))
            continue
        # (B*H, C, Q, P)
        sampled_per_level.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (B, Q, H, L, P) -> (B*H, 1, Q, L*P)
    weights = attention_weights.transpose(1, 2).reshape(batch * num_heads, 1, num_queries, num_levels * num_points)
    output = (torch.stack(sampled_per_level, dim=-2).flatten(-2) * weights).sum(-1)
    output = output.reshape(batch, num_heads * head_dim, num_queries)
    return output.transpose(1, 2).contiguous().to(out_dtype)
