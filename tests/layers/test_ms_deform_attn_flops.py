"""fvcore counts the deformable-attention op with the project's handle, identically on every backend."""
import pytest
import torch

from focus_detr.analysis.flop_handles import MSDA_FLOP_HANDLES, flop_count_analysis, msda_flops
from focus_detr.layers.ms_deform_attn import MultiScaleDeformableAttention
from focus_detr.layers.ms_deform_attn_backends import available_backends
from focus_detr.layers.ms_deform_attn_op import OP_NAME


def module_and_inputs(backend, batch=2, queries=11, embed_dim=32, heads=4, levels=2, points=3):
    module = MultiScaleDeformableAttention(embed_dim=embed_dim, num_heads=heads, num_levels=levels,
                                           num_points=points, backend=backend).eval()
    spatial_shapes = torch.tensor([[6, 5], [3, 2]])
    level_start_index = torch.tensor([0, 30])
    inputs = (torch.randn(batch, queries, embed_dim), torch.randn(batch, 36, embed_dim),
              torch.rand(batch, queries, levels, 2), spatial_shapes, level_start_index)
    return module, inputs


def linear_flops(batch, rows, in_features, out_features):
    return batch * rows * in_features * out_features


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_module_flops_include_msda_and_no_unsupported_msda_op(backend):
    module, inputs = module_and_inputs(backend)
    analysis = flop_count_analysis(module, inputs)
    analysis.unsupported_ops_warnings(False)
    total = analysis.total()
    assert OP_NAME in MSDA_FLOP_HANDLES
    assert OP_NAME not in analysis.unsupported_ops()
    assert "aten::grid_sampler" not in analysis.unsupported_ops()
    expected_msda = msda_flops(batch=2, num_queries=11, num_heads=4, num_levels=2, num_points=3, head_dim=8)
    assert expected_msda == 5 * 2 * 11 * 4 * 2 * 3 * 8
    assert analysis.by_operator()["ms_deform_attn"] == expected_msda
    expected_linears = (
        linear_flops(2, 36, 32, 32)  # value_proj
        + linear_flops(2, 11, 32, 4 * 2 * 3 * 2)  # sampling_offsets
        + linear_flops(2, 11, 32, 4 * 2 * 3)  # attention_weights
        + linear_flops(2, 11, 32, 32)  # output_proj
    )
    assert total == expected_msda + expected_linears


def test_flop_count_is_the_same_on_every_cpu_backend():
    totals = set()
    for backend in available_backends("cpu"):
        module, inputs = module_and_inputs(backend)
        analysis = flop_count_analysis(module, inputs)
        analysis.unsupported_ops_warnings(False)
        totals.add(analysis.total())
    assert len(totals) == 1
