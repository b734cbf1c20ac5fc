"""Multi-scale deformable attention, the op: reference and CPU kernel vs an independent gather-based oracle,
gradients, input validation, backend selection and the custom op (the module: test_ms_deform_attn_module.py)."""
import math
import os

import pytest
import torch

from focus_detr.layers.ms_deform_attn import MultiScaleDeformableAttention
from focus_detr.layers.ms_deform_attn_backends import BACKEND_ENV_VAR, backend_summary, select_backend
from focus_detr.layers.ms_deform_attn_op import OP_NAME, multi_scale_deformable_attention
from focus_detr.layers.ms_deform_attn_reference import multi_scale_deformable_attention_pytorch
from msda_inputs import BACKENDS_UNDER_TEST, HAS_CPU_KERNEL, level_layout, make_inputs, needs_cpu_kernel, oracle


def python_loop(value, spatial_shapes, level_start_index, locations, weights):
    """Scalar loop, used only to validate the oracle on a tiny case."""
    batch, _, heads, channels = value.shape
    queries, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    output = torch.zeros(batch, queries, heads, channels, dtype=value.dtype)
    for b in range(batch):
        for q in range(queries):
            for h in range(heads):
                for l in range(levels):
                    height, width = spatial_shapes[l].tolist()
                    start = int(level_start_index[l])
                    for p in range(points):
                        x = locations[b, q, h, l, p, 0].item() * width - 0.5
                        y = locations[b, q, h, l, p, 1].item() * height - 0.5
                        for yy in (math.floor(y), math.floor(y) + 1):
                            for xx in (math.floor(x), math.floor(x) + 1):
                                if 0 <= yy < height and 0 <= xx < width:
                                    w = (1 - abs(x - xx)) * (1 - abs(y - yy)) * weights[b, q, h, l, p].item()
                                    output[b, q, h] += w * value[b, start + yy * width + xx, h]
    return output.flatten(2)


LAYOUTS = {
    "multi_level_non_square_with_1x1": [(5, 7), (3, 4), (2, 1), (1, 1)],
    "single_level": [(6, 4)],
    "only_1x1": [(1, 1)],
}


def test_oracle_matches_scalar_loop():
    inputs = make_inputs([(3, 4), (1, 2)], batch=1, queries=3, heads=2, channels=2, points=2)
    torch.testing.assert_close(oracle(*inputs), python_loop(*inputs), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("queries", [1, 700])
def test_forward_matches_oracle_float64(backend, layout, queries):
    inputs = make_inputs(LAYOUTS[layout], queries=queries, low=-0.3, high=1.3)
    out = multi_scale_deformable_attention(*inputs, backend=backend)
    assert out.shape == (2, queries, 2 * 3) and out.dtype == torch.float64
    torch.testing.assert_close(out, oracle(*inputs), rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_forward_on_borders_and_pixel_centres(backend):
    # Locations exactly on map borders (0, 1), just outside them, on pixel centres and on pixel edges.
    shapes = [(4, 5), (1, 1), (3, 2)]
    value, spatial_shapes, level_start_index, _, _ = make_inputs(shapes, batch=1, queries=1)
    special = torch.tensor([0.0, 1.0, -1e-9, 1 + 1e-9, 0.1, 0.5, 0.25, 0.75, 0.3, 0.9, -0.5, 1.5, 0.6, 0.05],
                           dtype=torch.float64)
    xs, ys = torch.meshgrid(special, special, indexing="ij")
    grid = torch.stack([xs.flatten(), ys.flatten()], -1)  # (N, 2)
    queries = grid.shape[0]
    locations = grid.view(1, queries, 1, 1, 1, 2).expand(1, queries, 2, 3, 2, 2).contiguous()
    weights = torch.rand(1, queries, 2, 3, 2, dtype=torch.float64)
    inputs = (value, spatial_shapes, level_start_index, locations, weights)
    torch.testing.assert_close(multi_scale_deformable_attention(*inputs, backend=backend), oracle(*inputs),
                               rtol=0, atol=1e-10)


@needs_cpu_kernel
@pytest.mark.parametrize("channels", [8, 16, 5])
def test_cpu_kernel_matches_oracle_at_compiled_and_other_head_widths(channels):
    # 8 and 16 channels per head run a kernel compiled for that width; others the general one
    inputs = make_inputs(LAYOUTS["multi_level_non_square_with_1x1"], queries=300, heads=3, channels=channels, points=3,
                         low=-0.3, high=1.3)
    torch.testing.assert_close(multi_scale_deformable_attention(*inputs, backend="cpu"), oracle(*inputs), rtol=0,
                               atol=1e-10)


@needs_cpu_kernel
def test_cpu_kernel_float32_matches_reference():
    inputs = make_inputs([(10, 13), (5, 7), (3, 4), (2, 2)], batch=2, queries=300, heads=4, channels=32,
                         points=4, dtype=torch.float32)
    torch.testing.assert_close(multi_scale_deformable_attention(*inputs, backend="cpu"),
                               multi_scale_deformable_attention_pytorch(*inputs), rtol=1e-5, atol=1e-5)


def _grads(backend, inputs, grad_output):
    value, spatial_shapes, level_start_index, locations, weights = [t.clone() for t in inputs]
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    out = multi_scale_deformable_attention(leaves[0], spatial_shapes, level_start_index, *leaves[1:],
                                           backend=backend)
    return torch.autograd.grad(out, leaves, grad_output)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_cpu_kernel_backward_matches_reference(dtype, tol):
    inputs = make_inputs([(9, 11), (4, 6), (2, 3), (1, 1)], batch=2, queries=200, heads=3, channels=8, points=3,
                         dtype=dtype, low=-0.1, high=1.1)
    grad_output = torch.randn(2, 200, 24, dtype=dtype)
    for got, expected in zip(_grads("cpu", inputs, grad_output), _grads("pytorch", inputs, grad_output)):
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


@needs_cpu_kernel
def test_cpu_kernel_backward_is_bitwise_identical_across_thread_counts():
    inputs = make_inputs([(12, 9), (6, 5)], batch=2, queries=400, heads=4, channels=8, points=4,
                         dtype=torch.float32)
    grad_output = torch.randn(2, 400, 32)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _grads("cpu", inputs, grad_output)
        torch.set_num_threads(2)
        multi = _grads("cpu", inputs, grad_output)
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(single, multi):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_gradcheck_float64(backend):
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        [(3, 4), (2, 1), (1, 1)], batch=1, queries=2, heads=2, channels=2, points=2, low=-0.1, high=1.1
    )

    def fn(v, loc, w):
        return multi_scale_deformable_attention(v, spatial_shapes, level_start_index, loc, w, backend=backend)

    args = tuple(t.requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("batch,queries", [(0, 4), (2, 0)])
def test_empty_batch_or_queries_gives_empty_output_and_zero_grads(backend, batch, queries):
    value, spatial_shapes, level_start_index, locations, weights = make_inputs([(3, 4), (1, 2)], batch=batch,
                                                                               queries=queries)
    value.requires_grad_()
    out = multi_scale_deformable_attention(value, spatial_shapes, level_start_index, locations, weights,
                                           backend=backend)
    assert out.shape == (batch, queries, 6)
    out.sum().backward()
    assert value.grad is not None and torch.count_nonzero(value.grad) == 0


# --------------------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------------------
def _valid():
    return list(make_inputs([(3, 4), (2, 2)], batch=2, queries=3, dtype=torch.float32))


BAD_INPUTS = {
    "value_rank": (0, lambda a: a[0].flatten(2), "value"),
    "locations_rank": (3, lambda a: a[3][..., 0], "sampling_locations"),
    "weights_shape": (4, lambda a: a[4][:, :, :, :, :1].contiguous(), "attention_weights"),
    "spatial_shapes_cols": (1, lambda a: a[1][:, :1], "spatial_shapes"),
    "spatial_shapes_float": (1, lambda a: a[1].float(), "spatial_shapes"),
    "shapes_vs_value_length": (1, lambda a: torch.tensor([[3, 4], [2, 3]]), "spatial_shapes"),
    "level_start_index_len": (2, lambda a: a[2][:1], "level_start_index"),
    "level_start_index_values": (2, lambda a: torch.tensor([0, 11]), "level_start_index"),
    "locations_levels": (3, lambda a: a[3][:, :, :, :1].contiguous(), "sampling_locations"),
    "value_non_contiguous": (0, lambda a: a[0].transpose(2, 3).contiguous().transpose(2, 3), "value"),
    "locations_non_contiguous": (3, lambda a: a[3].transpose(1, 2).contiguous().transpose(1, 2),
                                 "sampling_locations"),
    "weights_non_contiguous": (4, lambda a: a[4].transpose(0, 1).contiguous().transpose(0, 1),
                               "attention_weights"),
    "locations_dtype": (3, lambda a: a[3].double(), "sampling_locations"),
    "weights_dtype": (4, lambda a: a[4].half(), "attention_weights"),
    "value_integer": (0, lambda a: a[0].long(), "value"),
    "locations_device": (3, lambda a: a[3].to("meta"), "sampling_locations"),
    "value_not_tensor": (0, lambda a: a[0].numpy(), "value"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_argument(case):
    index, mutate, name = BAD_INPUTS[case]
    args = _valid()
    args[index] = mutate(args)
    with pytest.raises(ValueError, match=name):
        multi_scale_deformable_attention(*args)


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_an_empty_level_samples_nothing_on_every_backend(backend):
    # the checks accept a level of height or width 0 and the kernels sample nothing there; the PyTorch reference
    # failed in grid_sample ("expected input to have non-empty spatial dimensions")
    value, spatial_shapes, level_start_index, locations, weights = make_inputs([(3, 4), (0, 5), (2, 2)])
    without_it = weights.clone()
    without_it[:, :, :, 1] = 0
    expected = oracle(value, spatial_shapes, level_start_index, locations, without_it)
    got = multi_scale_deformable_attention(value, spatial_shapes, level_start_index, locations, weights,
                                           backend=backend)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_a_new_level_start_index_equal_to_the_checked_one_is_taken():
    # the layout check's memo compared a new, value-equal level_start_index with `==`: "Boolean value of Tensor with
    # more than one value is ambiguous" while the first one lived; a wrong one got that message too
    args = _valid()
    level_start_index = args[2]  # kept alive through the calls below, as the memo's entry
    expected = multi_scale_deformable_attention(*args)
    args[2] = level_start_index.clone()
    assert torch.equal(multi_scale_deformable_attention(*args), expected)
    args[2] = torch.tensor([0, 11])
    with pytest.raises(ValueError, match="level_start_index must be the exclusive cumulative sum"):
        multi_scale_deformable_attention(*args)


@needs_cpu_kernel
def test_cpu_kernel_never_reads_a_level_whose_size_overflows():
    # h * w = 2**64 wrapped to 0 in int64 and passed the kernel's bounds test: a segfault where the Python checks
    # are skipped (the op called directly, a traced graph); such a level is now never read, like any that does not fit
    value, _, _, locations, weights = _valid()
    spatial_shapes, level_start_index = torch.tensor([[2 ** 33, 2 ** 31], [2, 2]]), torch.tensor([0, 0])
    output = torch.ops.focus_detr.ms_deform_attn(value[:, :4].contiguous(), spatial_shapes, level_start_index,
                                                 locations, weights, "cpu")
    assert torch.isfinite(output).all()


def test_im2col_step_must_be_positive():
    with pytest.raises(ValueError, match=r"^im2col_step must be a positive int, got 0$"):
        multi_scale_deformable_attention(*_valid(), im2col_step=0)


# --------------------------------------------------------------------------------------------------------------
# Backend selection and the custom op
# --------------------------------------------------------------------------------------------------------------
def test_unknown_backend_raises():
    with pytest.raises(ValueError, match=r"^MSDA backend must be one of \('pytorch', 'cpu', 'cuda'\), got 'triton'$"):
        multi_scale_deformable_attention(*_valid(), backend="triton")


def test_forcing_cuda_on_cpu_tensor_raises_instead_of_falling_back():
    # the reason after the colon depends on the build (no extension, no CUDA kernel, a CPU tensor)
    with pytest.raises(RuntimeError, match=r"^MSDA backend 'cuda' was requested but cannot run: "):
        multi_scale_deformable_attention(*_valid(), backend="cuda")


def test_environment_variable_forces_backend(monkeypatch):
    value = _valid()[0]
    monkeypatch.setenv(BACKEND_ENV_VAR, "pytorch")
    assert select_backend(value) == "pytorch"
    monkeypatch.setenv(BACKEND_ENV_VAR, "cuda")  # a user's setting: one line from the command line, not a traceback
    with pytest.raises(ValueError, match=f"'cuda' \\(from \\${BACKEND_ENV_VAR}; unset it"):
        select_backend(value)
    monkeypatch.setenv(BACKEND_ENV_VAR, "gpu")  # set far from the call: the message says where it came from
    with pytest.raises(ValueError, match=f"got 'gpu' \\(from \\${BACKEND_ENV_VAR}"):
        select_backend(value)
    # an explicit argument wins over the environment
    assert select_backend(value, backend="pytorch") == "pytorch"


def test_automatic_backend_on_cpu():
    value = _valid()[0]
    if os.environ.get(BACKEND_ENV_VAR):
        pytest.skip(f"{BACKEND_ENV_VAR} is set in the environment")
    assert select_backend(value) == ("cpu" if HAS_CPU_KERNEL else "pytorch")
    # float16/bfloat16 (autocast) run the kernel on a float32 copy of value
    assert select_backend(value.half()) == ("cpu" if HAS_CPU_KERNEL else "pytorch")
    assert select_backend(value.bfloat16()) == ("cpu" if HAS_CPU_KERNEL else "pytorch")


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_kernel_samples_reduced_precision_value_in_float32(dtype):
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        [(6, 7), (3, 4)], queries=9, channels=4, dtype=torch.float32
    )
    value = value.to(dtype).requires_grad_()
    locations.requires_grad_()
    output = multi_scale_deformable_attention(
        value, spatial_shapes, level_start_index, locations, weights, backend="cpu"
    )
    assert output.dtype == dtype
    # the float32 result of the same (rounded) value, rounded once (float32 accumulation inside): within one
    # rounding of the output dtype
    expected = oracle(value.detach().float(), spatial_shapes, level_start_index, locations.detach(), weights)
    torch.testing.assert_close(output.float(), expected, rtol=torch.finfo(dtype).eps, atol=1e-5)
    output.float().sum().backward()
    assert value.grad.dtype == dtype and locations.grad.dtype == torch.float32
    assert torch.isfinite(value.grad.float()).all() and value.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_custom_op_passes_opcheck(backend):
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        [(3, 4), (1, 2)], batch=1, queries=3, heads=2, channels=2, points=2
    )
    value.requires_grad_()
    locations.requires_grad_()
    weights.requires_grad_()
    torch.library.opcheck(
        torch.ops.focus_detr.ms_deform_attn.default,
        (value, spatial_shapes, level_start_index, locations, weights, backend),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_jit_trace_records_one_msda_node(backend):
    module = MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=2, num_points=2,
                                           backend=backend).eval()
    spatial_shapes, level_start_index, num_values = level_layout([(4, 5), (2, 3)])
    args = (torch.randn(1, 7, 16), torch.randn(1, num_values, 16), torch.rand(1, 7, 2, 2), spatial_shapes,
            level_start_index)
    traced = torch.jit.trace(module, args, check_trace=False)
    kinds = [node.kind() for node in traced.inlined_graph.nodes()]
    assert kinds.count(OP_NAME) == 1
    assert "aten::grid_sampler" not in kinds
    torch.testing.assert_close(traced(*args), module(*args))


def test_the_log_line_names_the_backend_and_never_refuses(monkeypatch):
    # build_model logs it for every model, including those of commands that never run the attention
    monkeypatch.setenv(BACKEND_ENV_VAR, "pytorch")
    assert backend_summary("cpu").startswith(
        f"deformable attention (MSDA) on cpu: the pytorch backend (${BACKEND_ENV_VAR}=pytorch); ")
    monkeypatch.setenv(BACKEND_ENV_VAR, "cuda")
    assert "'cuda'" in backend_summary("cpu") and "cannot run" in backend_summary("cpu")
