"""The multi-scale deformable attention module: parameter names and initialisation of the official checkpoint,
forward semantics (spec 9.3, sampled by an independent oracle), sampling references, autocast, bad input and
torch.compile."""
import math

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
from msda_inputs import BACKENDS_UNDER_TEST, level_layout, needs_cpu_kernel, oracle


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


@pytest.mark.parametrize("argument,value", [("num_heads", 0), ("embed_dim", 0), ("im2col_step", 0),
                                            ("num_points", 2.0), ("backend", "gpu")])
def test_module_refuses_a_bad_argument_when_built(argument, value):
    # num_heads=0 / embed_dim=0 were a ZeroDivisionError; im2col_step=0 and backend="gpu" failed at the first forward
    with pytest.raises(ValueError, match=f"MultiScaleDeformableAttention: {argument} must be"):
        MultiScaleDeformableAttention(**{"embed_dim": 16, "num_heads": 2, argument: value})


@pytest.mark.parametrize("box_refs", [False, True])
def test_module_takes_no_queries_and_an_empty_batch(box_refs):
    # sampling_locations reshaped with -1, which zero rows leave undefined: a RuntimeError the op itself does not have
    module, query, value, refs, spatial_shapes, level_start_index = _module_and_inputs(box_refs)
    no_queries = module(query[:, :0], value, refs[:, :0], spatial_shapes, level_start_index)
    assert no_queries.shape == (2, 0, 16)
    empty_batch = module(query[:0], value[:0], refs[:0], spatial_shapes, level_start_index)
    assert empty_batch.shape == (0, 5, 16)


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
