"""Random inputs of multi-scale deformable attention, shared by the tests of its backends."""
import torch


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
