"""The CUDA kernels of multi-scale deformable attention, run on the CPU through a CUDA emulation.

``cuda_emulation/`` compiles ``csrc/cuda/ms_deform_attn_kernels.cuh`` -- the same kernels and launch planning the GPU
build uses -- with CPU stand-ins for thread indices, ``__syncthreads``, warp shuffles and atomics. This checks the
kernels' indexing, vector widths, shuffle reductions and atomic paths against the PyTorch reference on any machine;
timing, memory and real-hardware behaviour stay with ``test_ms_deform_attn_cuda.py`` on a GPU.
"""
from pathlib import Path

import pytest
import torch

from focus_detr.layers.ms_deform_attn_op import multi_scale_deformable_attention
from msda_inputs import make_inputs as random_inputs

HERE = Path(__file__).resolve().parent
CUDA_SOURCES = HERE.parents[1] / "projects" / "FocusDETR" / "focus_detr" / "layers" / "csrc" / "cuda"
SHAPES = [(7, 9), (4, 5), (2, 3), (1, 1)]


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    from torch.utils.cpp_extension import load

    return load(
        "focus_detr_msda_cuda_emulated",
        [str(HERE / "cuda_emulation" / "msda_emulated.cpp")],
        extra_include_paths=[str(HERE / "cuda_emulation"), str(CUDA_SOURCES)],
        extra_cflags=["-O1"],
        build_directory=str(tmp_path_factory.mktemp("msda_cuda_emulated")),
    )


def make_inputs(batch=2, queries=12, heads=2, channels=32, points=2, shapes=SHAPES, seed=0):
    """Shared random inputs (float64), with some points exactly on borders and pixel centres."""
    value, spatial_shapes, level_start_index, locations, weights = random_inputs(
        shapes, batch, queries, heads, channels, points, seed=seed, low=-0.15, high=1.15
    )
    for query, location in enumerate((0.0, 1.0, 0.5)[:queries]):
        locations[:, query, :, :, 0] = location
    return value, spatial_shapes, level_start_index, locations, weights


def reference(value, spatial_shapes, level_start_index, locations, weights, grad_output):
    """float64 PyTorch reference output and gradients (value, locations, weights)."""
    leaves = [t.detach().double().requires_grad_() for t in (value, locations, weights)]
    out = multi_scale_deformable_attention(
        leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2], backend="pytorch"
    )
    return (out, *torch.autograd.grad(out, leaves, grad_output.double()))


def relative_error(got, expected):
    return ((got.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize(
    "channels,queries",
    [
        (32, 12),  # float4 loads, 8 threads per row, shuffle reduction within the row
        (64, 12),  # 16 threads per row
        (30, 12),  # scalar loads, 30 threads per row: shuffle segments of 2 meet through atomics
        (256, 3),  # 64 threads per row, wider than a warp: per-warp partial sums meet through atomics
    ],
)
def test_float32_kernels_match_reference(emulated, channels, queries):
    value, shapes, starts, locations, weights = make_inputs(channels=channels, queries=queries)
    grad_output = torch.randn(value.shape[0], queries, value.shape[2] * channels, dtype=torch.float64)
    expected = reference(value, shapes, starts, locations, weights, grad_output)
    args = (value.float(), shapes, starts, locations.float(), weights.float())
    out = emulated.forward(*args)
    grads = emulated.backward(*args, grad_output.float())
    assert relative_error(out, expected[0]) < 1e-6
    for got, want in zip(grads, expected[1:]):
        assert relative_error(got, want) < 1e-5


def test_misaligned_value_takes_the_scalar_path(emulated):
    value, shapes, starts, locations, weights = make_inputs(channels=32)
    # A view one element into its storage: rows are no longer 16-byte aligned, so no vector loads.
    storage = torch.empty(value.numel() + 1, dtype=torch.float32)
    shifted = storage[1:].view(value.shape).copy_(value)
    grad_output = torch.randn(2, 12, 64, dtype=torch.float64)
    expected = reference(value, shapes, starts, locations, weights, grad_output)
    args = (shifted, shapes, starts, locations.float(), weights.float())
    assert relative_error(emulated.forward(*args), expected[0]) < 1e-6
    for got, want in zip(emulated.backward(*args, grad_output.float()), expected[1:]):
        assert relative_error(got, want) < 1e-5


def test_float64_kernels_match_reference_exactly(emulated):
    value, shapes, starts, locations, weights = make_inputs(channels=32)
    grad_output = torch.randn(2, 12, 64, dtype=torch.float64)
    expected = reference(value, shapes, starts, locations, weights, grad_output)
    args = (value, shapes, starts, locations, weights)
    assert torch.allclose(emulated.forward(*args), expected[0], rtol=0, atol=1e-12)
    for got, want in zip(emulated.backward(*args, grad_output), expected[1:]):
        assert torch.allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
def test_reduced_precision_accumulates_in_float32(emulated, dtype, tolerance):
    value, shapes, starts, locations, weights = make_inputs(channels=32)
    value = value.to(dtype)  # the reference sees the same rounded values
    grad_output = torch.randn(2, 12, 64, dtype=torch.float64).to(dtype)
    expected = reference(value, shapes, starts, locations, weights, grad_output)
    args = (value, shapes, starts, locations.float(), weights.float())
    out = emulated.forward(*args)
    assert out.dtype == dtype
    assert relative_error(out, expected[0]) < tolerance
    grads = emulated.backward(*args, grad_output)
    assert [g.dtype for g in grads] == [dtype, torch.float32, torch.float32]
    for got, want in zip(grads, expected[1:]):
        assert relative_error(got, want) < tolerance


def test_level_outside_the_value_tensor_is_never_read(emulated):
    value, shapes, starts, locations, weights = make_inputs(channels=32)
    bad_starts = starts.clone()
    bad_starts[1] = value.shape[1]  # level 1 would start past the end of value
    args = (value.float(), shapes, bad_starts, locations.float(), weights.float())
    weights_without_level1 = weights.clone()
    weights_without_level1[:, :, :, 1] = 0
    expected = reference(value, shapes, starts, locations, weights_without_level1, torch.zeros(2, 12, 64))[0]
    assert relative_error(emulated.forward(*args), expected) < 1e-6


def test_level_whose_size_overflows_is_never_read(emulated):
    # h * w = 2**64 wrapped to 0 in int64 and passed the bounds test: an illegal memory access on a GPU
    value, shapes, starts, locations, weights = make_inputs(channels=32)
    bad_shapes = shapes.clone()
    bad_shapes[1] = torch.tensor([2 ** 33, 2 ** 31])
    args = (value.float(), bad_shapes, starts, locations.float(), weights.float())
    weights_without_level1 = weights.clone()
    weights_without_level1[:, :, :, 1] = 0
    expected = reference(value, shapes, starts, locations, weights_without_level1, torch.zeros(2, 12, 64))[0]
    assert relative_error(emulated.forward(*args), expected) < 1e-6


def test_no_queries_gives_an_empty_output(emulated):
    value, shapes, starts, locations, weights = make_inputs(channels=32, queries=0)
    out = emulated.forward(value.float(), shapes, starts, locations.float(), weights.float())
    assert out.shape == (2, 0, 64)


@pytest.mark.parametrize(
    "dtype,channels,widths",
    [
        (torch.float32, 32, [4, 4]),
        (torch.float64, 32, [2, 2]),
        # 16-byte reads forward; backward, one 16-byte float32 vector per thread: float32's 8 threads per row
        (torch.bfloat16, 32, [8, 4]),
        (torch.float16, 32, [8, 4]),
        (torch.float16, 20, [1, 4]),  # 20 channels: no 8-wide vectors, 4-wide ones still fit
        (torch.float32, 30, [1, 1]),
    ],
)
def test_vector_widths(emulated, dtype, channels, widths):
    value = torch.zeros(1, 5, 2, channels, dtype=dtype)
    assert emulated.planned_vector_widths(value) == widths
    shifted = torch.zeros(value.numel() + 1, dtype=dtype)[1:].view(value.shape)  # rows not vector-aligned
    assert emulated.planned_vector_widths(shifted) == [1, 1]


@pytest.mark.parametrize("group,segment", [(8, 8), (4, 4), (30, 2), (64, 32), (3, 1)])
def test_shuffle_segments(emulated, group, segment):
    assert emulated.shuffle_segment(group) == segment


def test_gradcheck_float64(emulated):
    value, shapes, starts, _, weights = make_inputs(batch=1, queries=3, heads=2, channels=2, points=1,
                                                    shapes=[(2, 3), (1, 1)])
    # Away from the kinks of bilinear sampling (pixel centres, borders), where finite differences are not gradients.
    locations = 0.05 + 0.9 * torch.rand(1, 3, 2, 2, 1, 2, generator=torch.Generator().manual_seed(1),
                                        dtype=torch.float64)

    class EmulatedMSDA(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value, locations, weights):
            ctx.save_for_backward(value, locations, weights)
            return emulated.forward(value, shapes, starts, locations, weights)

        @staticmethod
        def backward(ctx, grad_output):
            value, locations, weights = ctx.saved_tensors
            return tuple(emulated.backward(value, shapes, starts, locations, weights, grad_output.contiguous()))

    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(EmulatedMSDA.apply, leaves, eps=1e-6, atol=1e-7)
