"""Random inputs of multi-scale deformable attention, an independent oracle and the backends under test, shared by
the tests of its backends and of the module."""
import pytest
import torch

from focus_detr.layers.ms_deform_attn_backends import available_backends

HAS_CPU_KERNEL = "cpu" in available_backends("cpu")
needs_cpu_kernel = pytest.mark.skipif(not HAS_CPU_KERNEL, reason="focus_detr.layers._C (CPU kernel) not built")
BACKENDS_UNDER_TEST = ["pytorch"] + (["cpu"] if HAS_CPU_KERNEL else [])


def level_layout(shapes):
    """Per-level ``(h, w)`` -> spatial_shapes ``(L, 2)``, level_start_index ``(L,)`` and the number of values."""
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64).view(-1, 2)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index, int(sizes.sum())


def make_inputs(shapes, batch=2, queries=5, heads=2, channels=3, points=2, dtype=torch.float64, seed=0, low=-0.2,
                high=1.2):
    """value ``(B, S, H, C)``, spatial_shapes, level_start_index, locations ``(B, Q, H, L, P, 2)`` uniform in
    [low, high) (so partly outside the map), weights ``(B, Q, H, L, P)`` uniform in [0, 1); all on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index, num_values = level_layout(shapes)
    levels = spatial_shapes.shape[0]
    value = torch.randn(batch, num_values, heads, channels, dtype=dtype, generator=generator)
    locations = low + (high - low) * torch.rand(batch, queries, heads, levels, points, 2, dtype=dtype,
                                                generator=generator)
    weights = torch.rand(batch, queries, heads, levels, points, dtype=dtype, generator=generator)
    return value, spatial_shapes, level_start_index, locations, weights


def oracle(value, spatial_shapes, level_start_index, locations, weights):
    """Independent of grid_sample and of the kernels: explicit 4-corner gather with the align_corners=False
    convention (pixel i covers [i, i+1) / size, centre at (i + 0.5) / size), zero outside the map."""
    batch, _, heads, channels = value.shape
    queries, points = locations.shape[1], locations.shape[4]
    output = value.new_zeros(batch, queries, heads, channels)
    b_index = torch.arange(batch).view(batch, 1, 1, 1).expand(batch, queries, heads, points)
    h_index = torch.arange(heads).view(1, 1, heads, 1).expand(batch, queries, heads, points)
    for level, ((height, width), start) in enumerate(zip(spatial_shapes.tolist(), level_start_index.tolist())):
        x = locations[:, :, :, level, :, 0] * width - 0.5
        y = locations[:, :, :, level, :, 1] * height - 0.5
        x0, y0 = x.floor(), y.floor()
        for dy in (0, 1):
            for dx in (0, 1):
                xx, yy = x0 + dx, y0 + dy
                corner_weight = (1 - (x - xx).abs()) * (1 - (y - yy).abs())
                inside = (xx >= 0) & (xx < width) & (yy >= 0) & (yy < height)
                token = start + (yy.clamp(0, height - 1) * width + xx.clamp(0, width - 1)).long()
                sampled = value[b_index, token, h_index]  # (B, Q, H, P, C)
                coef = corner_weight * inside * weights[:, :, :, level]
                output += (coef[..., None] * sampled).sum(3)
    return output.flatten(2)
