"""CUDA kernel of multi-scale deformable attention vs the pytorch reference (skipped without a GPU)."""
import pytest
import torch

from focus_detr.layers.ms_deform_attn import MultiScaleDeformableAttention
from focus_detr.layers.ms_deform_attn_backends import available_backends
from focus_detr.layers.ms_deform_attn_op import multi_scale_deformable_attention
from msda_inputs import make_inputs as random_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or "cuda" not in available_backends("cuda"),
        reason="needs a GPU and focus_detr.layers._C built with the CUDA kernel",
    ),
]

SHAPES = [(23, 31), (12, 16), (6, 8), (3, 4), (1, 1)]


def make_inputs(batch=2, queries=300, heads=4, channels=32, points=4, dtype=torch.float32, seed=0, shapes=SHAPES):
    """Shared random inputs (float64, CPU) moved to the GPU: value in ``dtype``, locations and weights in the
    kernel's accumulation precision."""
    value, spatial_shapes, level_start_index, locations, weights = random_inputs(
        shapes, batch, queries, heads, channels, points, seed=seed, low=-0.1, high=1.1
    )
    coord_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return (value.to("cuda", dtype), spatial_shapes.cuda(), level_start_index.cuda(),
            locations.to("cuda", coord_dtype), weights.to("cuda", coord_dtype))


def run(backend, inputs, grad_output):
    value, spatial_shapes, level_start_index, locations, weights = inputs
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    out = multi_scale_deformable_attention(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2],
                                           backend=backend)
    grads = torch.autograd.grad(out, leaves, grad_output.to(out.dtype))
    return out, grads


def relative_error(got, expected):
    return ((got.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("channels", [32, 64, 30, 256])
def test_float32_forward_backward_match_reference(channels):
    # 32 / 64: vectorised paths; 30: scalar fallback; 256: a head wider than one warp (partial-sum atomics).
    inputs = make_inputs(channels=channels, queries=200 if channels < 256 else 50)
    grad_output = torch.randn(2, inputs[3].shape[1], 4 * channels, device="cuda")
    out, grads = run("cuda", inputs, grad_output)
    ref_out, ref_grads = run("pytorch", inputs, grad_output)
    assert relative_error(out, ref_out) < 1e-5
    for got, expected in zip(grads, ref_grads):
        assert relative_error(got, expected) < 1e-5


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
def test_reduced_precision_close_to_float64_reference(dtype, tolerance):
    # The kernel accumulates in float32: its error is that of rounding the inputs/outputs to `dtype`.
    inputs = make_inputs(dtype=dtype)
    grad_output = torch.randn(2, 300, 128, device="cuda")
    out, grads = run("cuda", inputs, grad_output)
    assert out.dtype == dtype and grads[0].dtype == dtype and grads[1].dtype == torch.float32
    exact = [inputs[0].double(), inputs[1], inputs[2], inputs[3].double(), inputs[4].double()]
    ref_out, ref_grads = run("pytorch", exact, grad_output.to(dtype).double())
    assert relative_error(out, ref_out) < tolerance
    for got, expected in zip(grads, ref_grads):
        assert relative_error(got, expected) < tolerance


def test_forward_is_deterministic():
    inputs = make_inputs(batch=2, queries=2000)
    first = multi_scale_deformable_attention(*inputs, backend="cuda")
    for _ in range(3):
        assert torch.equal(multi_scale_deformable_attention(*inputs, backend="cuda"), first)


def test_gradcheck_float64():
    inputs = make_inputs(batch=1, queries=3, heads=2, channels=4, points=2, dtype=torch.float64,
                         shapes=[(3, 4), (2, 1)])
    value, spatial_shapes, level_start_index, locations, weights = inputs

    def fn(v, loc, w):
        return multi_scale_deformable_attention(v, spatial_shapes, level_start_index, loc, w, backend="cuda")

    args = tuple(t.requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, nondet_tol=1e-12)


def test_cuda_is_chosen_automatically_and_cpu_shapes_accepted():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(queries=50)
    on_device = multi_scale_deformable_attention(value, spatial_shapes, level_start_index, locations, weights)
    on_host = multi_scale_deformable_attention(value, spatial_shapes.cpu(), level_start_index.cpu(), locations,
                                               weights)
    assert torch.equal(on_device, on_host)
    with pytest.raises(ValueError, match="spatial_shapes"):
        multi_scale_deformable_attention(value, spatial_shapes.cpu() + 1, level_start_index.cpu(), locations,
                                         weights)


def test_empty_queries():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(queries=0)
    assert multi_scale_deformable_attention(value, spatial_shapes, level_start_index, locations, weights,
                                            backend="cuda").shape == (2, 0, 128)


def test_module_bfloat16_autocast_end_to_end():
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(embed_dim=64, num_heads=2, num_levels=len(SHAPES), num_points=4).cuda()
    value_inputs = make_inputs(queries=10, heads=2)
    spatial_shapes, level_start_index = value_inputs[1], value_inputs[2]
    num_values = value_inputs[0].shape[1]
    query = torch.randn(2, 40, 64, device="cuda", requires_grad=True)
    value = torch.randn(2, num_values, 64, device="cuda")
    refs = torch.rand(2, 40, len(SHAPES), 2, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = module(query, value, refs, spatial_shapes, level_start_index)
    out.float().sum().backward()
    reference = module.float()(query, value, refs, spatial_shapes, level_start_index)
    assert torch.isfinite(query.grad).all()
    assert relative_error(out.float(), reference) < 3e-2
