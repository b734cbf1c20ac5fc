"""Multi-scale deformable attention: reference and CPU kernel vs an independent gather-based oracle, gradients,
input validation, backend selection, the custom op, and the module (names, init, forward semantics)."""
import math
import os

import pytest
import torch

from focus_detr.layers import ms_deform_attn as ms_deform_attn_module
from focus_detr.layers.ms_deform_attn import (
    MultiScaleDeformableAttention,
    SamplingReference,
    box_reference,
    box_scale_rows,
    per_point_rows,
    point_reference,
    sampling_locations,
)
from focus_detr.layers.ms_deform_attn_backends import BACKEND_ENV_VAR, available_backends, select_backend
from focus_detr.layers.ms_deform_attn_op import OP_NAME, multi_scale_deformable_attention
from focus_detr.layers.ms_deform_attn_reference import multi_scale_deformable_attention_pytorch
from msda_inputs import level_layout, make_inputs

HAS_CPU_KERNEL = "cpu" in available_backends("cpu")
needs_cpu_kernel = pytest.mark.skipif(not HAS_CPU_KERNEL, reason="focus_detr.layers._C (CPU kernel) not built")


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


BACKENDS_UNDER_TEST = ["pytorch"] + (["cpu"] if HAS_CPU_KERNEL else [])

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


def test_im2col_step_must_be_positive():
    with pytest.raises(ValueError, match="im2col_step"):
        multi_scale_deformable_attention(*_valid(), im2col_step=0)


# --------------------------------------------------------------------------------------------------------------
# Backend selection and the custom op
# --------------------------------------------------------------------------------------------------------------
def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="backend"):
        multi_scale_deformable_attention(*_valid(), backend="triton")


def test_forcing_cuda_on_cpu_tensor_raises_instead_of_falling_back():
    with pytest.raises(RuntimeError, match="cuda"):
        multi_scale_deformable_attention(*_valid(), backend="cuda")


def test_environment_variable_forces_backend(monkeypatch):
    value = _valid()[0]
    monkeypatch.setenv(BACKEND_ENV_VAR, "pytorch")
    assert select_backend(value) == "pytorch"
    monkeypatch.setenv(BACKEND_ENV_VAR, "cuda")
    with pytest.raises(RuntimeError):
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


# --------------------------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------------------------
def _official_entries(official_r50_shapes, prefix):
    return {k[len(prefix):]: v for k, v in official_r50_shapes.items() if k.startswith(prefix)}


@pytest.mark.parametrize("prefix", ["transformer.encoder.layers.0.attentions.1.",
                                    "transformer.decoder.layers.5.attentions.1."])
def test_parameter_names_and_shapes_match_official_checkpoint(official_r50_shapes, prefix):
    official = _official_entries(official_r50_shapes, prefix)
    assert len(official) == 8
    module = MultiScaleDeformableAttention(embed_dim=256, num_heads=8, num_levels=4, num_points=4)
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert ours == official


def test_init_weights_official_pattern():
    module = MultiScaleDeformableAttention(embed_dim=32, num_heads=8, num_levels=3, num_points=4)
    bias = module.sampling_offsets.bias.view(8, 3, 4, 2)
    # head 0 points along +x, head 2 along +y, head 1 along the diagonal (normalised by max(|cos|, |sin|))
    torch.testing.assert_close(bias[0, :, 0], torch.tensor([[1.0, 0.0]] * 3))
    torch.testing.assert_close(bias[2, 1, 0], torch.tensor([math.cos(math.pi / 2), 1.0]))
    torch.testing.assert_close(bias[1, 2, 0], torch.tensor([1.0, 1.0]))
    # point p is (p + 1) times point 0, identical across levels
    for point in range(4):
        torch.testing.assert_close(bias[:, :, point], bias[:, :, 0] * (point + 1))
    assert torch.count_nonzero(module.sampling_offsets.weight) == 0
    assert torch.count_nonzero(module.attention_weights.weight) == 0
    assert torch.count_nonzero(module.attention_weights.bias) == 0
    assert torch.count_nonzero(module.value_proj.bias) == 0 and torch.count_nonzero(module.output_proj.bias) == 0
    # re-applying after a foreign init restores the pattern
    saved = module.sampling_offsets.bias.detach().clone()
    torch.nn.init.normal_(module.sampling_offsets.bias)
    module.init_weights()
    torch.testing.assert_close(module.sampling_offsets.bias.detach(), saved)


def _module_and_inputs(box_refs, seed=0, num_points=3):
    torch.manual_seed(seed)
    module = MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=2, num_points=num_points).double()
    for p in module.parameters():  # break the symmetric init so every path matters
        torch.nn.init.normal_(p, std=0.3)
    spatial_shapes, level_start_index, num_values = level_layout([(4, 6), (2, 3)])
    query = torch.randn(2, 5, 16, dtype=torch.float64)
    value = torch.randn(2, num_values, 16, dtype=torch.float64)
    refs = torch.rand(2, 5, 2, 4 if box_refs else 2, dtype=torch.float64)
    return module, query, value, refs, spatial_shapes, level_start_index


@pytest.mark.parametrize("box_refs", [False, True])
def test_module_forward_semantics(box_refs):
    module, query, value, refs, spatial_shapes, level_start_index = _module_and_inputs(box_refs)
    query_pos = torch.randn_like(query)
    mask = torch.zeros(2, value.shape[1], dtype=torch.bool)
    mask[1, -5:] = True
    out = module(query, value, refs, spatial_shapes, level_start_index, query_pos=query_pos, key_padding_mask=mask)

    # Spec 9.3 written out by hand, sampled by the independent oracle.
    q = query + query_pos
    v = module.value_proj(value).masked_fill(mask[..., None], 0).view(2, -1, 2, 8)
    off = module.sampling_offsets(q).view(2, 5, 2, 2, 3, 2)
    aw = module.attention_weights(q).view(2, 5, 2, 6).softmax(-1).view(2, 5, 2, 2, 3)
    if box_refs:
        loc = refs[:, :, None, :, None, :2] + off / 3 * refs[:, :, None, :, None, 2:] * 0.5
    else:
        wh = torch.tensor([[6.0, 4.0], [3.0, 2.0]], dtype=torch.float64)
        loc = refs[:, :, None, :, None, :] + off / wh[None, None, None, :, None, :]
    expected = query + module.output_proj(oracle(v, spatial_shapes, level_start_index, loc, aw))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_module_padding_tokens_do_not_influence_output():
    module, query, value, refs, spatial_shapes, level_start_index = _module_and_inputs(False)
    mask = torch.zeros(2, value.shape[1], dtype=torch.bool)
    mask[:, -5:] = True
    changed = value.clone()
    changed[:, -5:] = 1e3
    a = module(query, value, refs, spatial_shapes, level_start_index, key_padding_mask=mask)
    b = module(query, changed, refs, spatial_shapes, level_start_index, key_padding_mask=mask)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    c = module(query, changed, refs, spatial_shapes, level_start_index)
    assert not torch.allclose(a, c)


def test_module_identity_and_value_defaults():
    module, query, _, refs, _, _ = _module_and_inputs(False)
    spatial_shapes, level_start_index, _ = level_layout([(1, 3), (1, 2)])  # value=None: the 5 queries
    identity = torch.randn_like(query)
    with_identity = module(query, None, refs, spatial_shapes, level_start_index, identity=identity)
    default = module(query, None, refs, spatial_shapes, level_start_index)
    torch.testing.assert_close(with_identity - identity, default - query, rtol=0, atol=1e-12)


@needs_cpu_kernel
def test_module_cpu_kernel_matches_reference_backend():
    module, query, value, refs, spatial_shapes, level_start_index = _module_and_inputs(True)
    module.backend = "cpu"
    a = module(query, value, refs, spatial_shapes, level_start_index)
    module.backend = "pytorch"
    b = module(query, value, refs, spatial_shapes, level_start_index)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)



def test_module_under_bfloat16_autocast_hands_the_op_float32_weights(monkeypatch):
    # the attention weights' softmax runs in float32 on bfloat16 logits (the kernels read float32 weights, and
    # the reduced-precision CPU softmax is slower): each query's weights sum to 1 to float32 precision
    module, query, value, refs, spatial_shapes, level_start_index = _module_and_inputs(False)
    module.float()
    seen = []
    original = ms_deform_attn_module.multi_scale_deformable_attention
    monkeypatch.setattr(ms_deform_attn_module, "multi_scale_deformable_attention",
                        lambda *args: seen.append(args[4]) or original(*args))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = module(query.float(), value.float(), refs.float(), spatial_shapes, level_start_index)
    weights = seen[0]
    assert weights.dtype == torch.float32
    sums = weights.flatten(-2).sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-6)
    expected = module(query.float(), value.float(), refs.float(), spatial_shapes, level_start_index)
    torch.testing.assert_close(output.float(), expected, rtol=0.05, atol=0.05)

def test_per_point_rows_repeat_each_level_pair_for_its_points():
    per_level = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # (Nq=2, L=3, 2)
    rows = per_point_rows(per_level, 4)
    assert rows.shape == (2, 3 * 4 * 2)
    for q in range(2):
        for level in range(3):
            for point in range(4):
                start = (level * 4 + point) * 2
                assert rows[q, start:start + 2].tolist() == per_level[q, level].tolist()


@pytest.mark.parametrize("box_refs", [False, True])
def test_module_sampling_reference_gives_the_same_bits_as_reference_tensors(box_refs):
    """The encoder and decoder hand over prepared rows (built once per forward); the module must then compute the
    very same sampling locations as from its (B, Nq, L, k) references (for boxes, with a power-of-two number of
    points: see box_scale_rows)."""
    module, query, value, refs, spatial_shapes, level_start_index = _module_and_inputs(box_refs, num_points=4)
    query_pos = torch.randn_like(query)
    if box_refs:
        # the decoder's form: one box per query, scaled per level (valid ratios)
        boxes = refs[:, :, 0]
        valid_ratios = torch.rand(2, 2, 2, dtype=torch.float64) * 0.5 + 0.5
        refs = boxes[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
        prepared = box_reference(boxes, box_scale_rows(valid_ratios, module.num_points))
    else:
        prepared = point_reference(refs, spatial_shapes, module.num_points)
    assert prepared.boxes == box_refs
    from_tensor = module(query, value, refs, spatial_shapes, level_start_index, query_pos=query_pos)
    from_rows = module(query, value, prepared, spatial_shapes, level_start_index, query_pos=query_pos)
    assert torch.equal(from_rows, from_tensor)


@pytest.mark.parametrize("num_points", [1, 2, 4, 8, 3])
def test_box_sampling_locations_round_as_the_official_formula(num_points):
    """Around boxes the locations are ``centre + offsets / P * size * 0.5`` (the official rounding); the prepared
    rows fold ``0.5 / P`` into the sizes, which for a power-of-two P gives exactly the same float32 values."""
    generator = torch.Generator().manual_seed(num_points)
    batch, queries, heads, levels = 2, 37, 3, 4
    boxes = torch.rand(batch, queries, 4, generator=generator)
    valid_ratios = torch.rand(batch, levels, 2, generator=generator) * 0.5 + 0.5
    offsets = torch.randn(batch * queries, heads, levels * num_points * 2, generator=generator) * 5
    reference = box_reference(boxes, box_scale_rows(valid_ratios, num_points))
    locations = sampling_locations(reference, offsets).view(batch, queries, heads, levels, num_points, 2)

    per_level = boxes[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # (B, Nq, L, 4)
    centres, sizes = per_level[:, :, None, :, None, :2], per_level[:, :, None, :, None, 2:]
    official = centres + offsets.view(batch, queries, heads, levels, num_points, 2) / num_points * sizes * 0.5
    if num_points & (num_points - 1) == 0:
        assert torch.equal(locations, official)
    else:
        torch.testing.assert_close(locations, official, rtol=1e-6, atol=1e-6)


def test_module_rejects_sampling_reference_of_other_queries():
    module, query, value, refs, spatial_shapes, level_start_index = _module_and_inputs(False)
    prepared = point_reference(refs[:, :4], spatial_shapes, module.num_points)
    with pytest.raises(ValueError, match=r"SamplingReference for \(2, 5\) queries"):
        module(query, value, prepared, spatial_shapes, level_start_index)
    wrong_points = point_reference(refs, spatial_shapes, module.num_points + 1)
    with pytest.raises(ValueError, match="3 points needs rows"):
        module(query, value, wrong_points, spatial_shapes, level_start_index)
    as_boxes = SamplingReference(prepared.origin, prepared.extent, boxes=True)
    with pytest.raises(ValueError, match="needs rows"):
        module(query, value, as_boxes, spatial_shapes, level_start_index)


MODULE_BAD_INPUTS = {
    "query": lambda a: {**a, "query": a["query"][..., :8]},
    "value": lambda a: {**a, "value": a["value"][:1]},
    "reference_points": lambda a: {**a, "reference_points": a["reference_points"][..., :1]},
    "spatial_shapes": lambda a: {**a, "spatial_shapes": a["spatial_shapes"][:1]},
    "key_padding_mask": lambda a: {**a, "key_padding_mask": torch.zeros(2, 3, dtype=torch.bool)},
}


@pytest.mark.parametrize("name", sorted(MODULE_BAD_INPUTS))
def test_module_bad_input_raises_value_error(name):
    module, query, value, refs, spatial_shapes, level_start_index = _module_and_inputs(False)
    kwargs = dict(query=query, value=value, reference_points=refs, spatial_shapes=spatial_shapes,
                  level_start_index=level_start_index)
    with pytest.raises(ValueError, match=name):
        module(**MODULE_BAD_INPUTS[name](kwargs))


def test_module_float_mask_rejected():
    module, query, value, refs, spatial_shapes, level_start_index = _module_and_inputs(False)
    with pytest.raises(ValueError, match="key_padding_mask"):
        module(query, value, refs, spatial_shapes, level_start_index,
               key_padding_mask=torch.zeros(2, value.shape[1]))


def test_module_rejects_indivisible_embed_dim():
    with pytest.raises(ValueError, match="embed_dim"):
        MultiScaleDeformableAttention(embed_dim=30, num_heads=8)


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_torch_compile_fullgraph_forward_and_backward(backend):
    module, query, value, refs, spatial_shapes, level_start_index = _module_and_inputs(False)
    module.backend = backend
    query.requires_grad_()
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    out = compiled(query, value, refs, spatial_shapes, level_start_index)
    (grad_compiled,) = torch.autograd.grad(out.sum(), query)
    expected = module(query, value, refs, spatial_shapes, level_start_index)
    (grad_eager,) = torch.autograd.grad(expected.sum(), query)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_compiled, grad_eager, rtol=0, atol=1e-10)
