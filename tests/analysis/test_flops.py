"""Counting a model's work: executed_multiply_adds (dense layers, backward passes included), the FLOP table's rows
and the activation count."""
import torch
import torch.nn.functional as F
from torch import nn

from focus_detr.analysis import executed_multiply_adds


def test_counts_a_linear_forward_and_its_backward():
    layer = nn.Linear(8, 4)
    x = torch.randn(5, 8, requires_grad=True)
    with torch.no_grad():
        assert executed_multiply_adds(lambda: layer(x)) == 5 * 8 * 4
    # backward: the input's and the weight's gradient, one more product of the forward's size each
    assert executed_multiply_adds(lambda: layer(x).sum().backward()) == 3 * 5 * 8 * 4


def test_counts_attention_on_the_cpu():
    # torch's counter alone sees nothing in the CPU attention kernel: a decoder's self-attention would be left out
    q, k, v = (torch.randn(1, 2, 6, 4, requires_grad=True) for _ in range(3))
    products = 1 * 2 * 6 * 6 * (4 + 4)  # QK^T and AV
    with torch.no_grad():
        assert executed_multiply_adds(lambda: F.scaled_dot_product_attention(q, k, v)) == products
    assert executed_multiply_adds(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == 3 * products


def test_detectron2s_flop_analysis_with_the_projects_handles_counts_what_the_tool_counts():
    # detectron2's FlopCountAnalysis on the model counted neither the deformable nor the fine-grained attention
    # (2% less on the tree model, "Unsupported operator" warnings): register_flop_handles adds both
    from conftest import build_tiny_model
    from detectron2.utils.analysis import FlopCountAnalysis

    from focus_detr.analysis.flop_handles import register_flop_handles
    from focus_detr.analysis.flops import count_flops

    torch.manual_seed(0)
    model = build_tiny_model().eval()
    item = {"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)}
    analysis = register_flop_handles(FlopCountAnalysis(model, [item]))
    analysis.unsupported_ops_warnings(False)
    by_operator = analysis.by_operator()
    assert by_operator["ms_deform_attn"] > 0 and by_operator["attention"] > 0
    assert analysis.total() == count_flops(model, [item]).total


def test_the_shared_projection_is_counted_in_the_row_of_each_call():
    # the transformer's enc_output + enc_output_norm project tokens + position for the foreground selector, then the
    # encoder's memory for the two-stage proposals: both calls were counted in the two-stage row
    import os

    from focus_detr.analysis.flops import count_flops
    from focus_detr.analysis.inputs import synthetic_inputs
    from focus_detr.engine import build_model, load_config

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    model = build_model(load_config(os.path.join(repo, "configs", "focus_detr_r18_trees.py")), "cpu")
    tokens, width = 16 * 20 + 8 * 10 + 4 * 5 + 2 * 3, 128  # 128x160 at strides 8 to 64; the config's token width
    one_call = tokens * width * width + 5 * tokens * width  # Linear, then LayerNorm (5 per element, fvcore)
    report = count_flops(model, synthetic_inputs(128, 160))
    assert report.per_module["two-stage proposals"] == one_call == 7_252_224
    assert report.per_module["foreground selector"] > one_call
    assert sum(report.per_module.values()) == report.total and report.per_module["other"] == 0


def test_activations_count_the_attention_outputs():
    # detectron2's activation_count_operators dropped the deformable and the fine-grained attention without a word
    from conftest import build_tiny_model
    from detectron2.utils.analysis import activation_count_operators

    from focus_detr.analysis.activations import count_activations

    torch.manual_seed(0)
    model = build_tiny_model().eval()
    item = {"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)}
    (total,), uncounted = count_activations(model, [item])
    assert total > sum(activation_count_operators(model, [item]).values())
    assert "aten::layer_norm" in uncounted and "focus_detr::ms_deform_attn" not in uncounted
