"""The FFN's training path (its own backward) computes what autograd computes through Linear-ReLU-Linear."""
import pytest
import torch

from focus_detr.layers.mlp import FFN, MLP


def _graph_nodes(tensor):
    """Names of the autograd nodes that produced ``tensor``."""
    names, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def _reference(ffn, x):
    return x + ffn.linear2(torch.relu(ffn.linear1(x)))


@pytest.mark.parametrize("input_needs_grad", [True, False])
def test_ffn_gradients_equal_autograd_through_its_layers(input_needs_grad):
    torch.manual_seed(0)
    ffn = FFN(16, 64).train()
    # a third of the hidden units negative: the ReLU's mask matters
    x = torch.randn(2, 37, 16).requires_grad_(input_needs_grad)
    grad_out = torch.randn(2, 37, 16)
    out = ffn(x)
    assert "_LinearReLULinearBackward" in _graph_nodes(out)
    out.backward(grad_out)
    got = [x.grad] + [p.grad for p in ffn.parameters()]
    x.grad = None
    ffn.zero_grad()
    expected_out = _reference(ffn, x)
    expected_out.backward(grad_out)
    expected = [x.grad] + [p.grad for p in ffn.parameters()]
    assert torch.allclose(out, expected_out, rtol=0, atol=1e-6)
    for name, a, b in zip(["input", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"], got, expected):
        if b is None:
            assert a is None, name
        else:
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


def test_ffn_weight_gradients_come_in_the_parameters_layout():
    # otherwise autograd copies each of them into a fresh buffer before accumulating it
    torch.manual_seed(0)
    ffn = FFN(16, 64).train()
    out = ffn(torch.randn(2, 37, 16))
    grads = torch.autograd.grad(out, list(ffn.parameters()), torch.randn(2, 37, 16))
    assert all(grad.is_contiguous() for grad in grads)


def test_ffn_without_autograd_in_blocks_of_rows_matches_the_plain_layers():
    torch.manual_seed(0)
    ffn = FFN(16, 64).eval()
    ffn.inference_block_rows = 8  # 74 rows: nine full blocks and a partial one
    x = torch.randn(2, 37, 16)
    with torch.no_grad():
        assert torch.allclose(ffn(x), _reference(ffn, x), rtol=0, atol=1e-6)
        # traced, the graph must not keep the example's block count: it serves other token counts
        traced = torch.jit.trace(ffn, x)
        other = torch.randn(2, 60, 16)  # more rows than the traced blocks cover
        assert torch.allclose(traced(other), _reference(ffn, other), rtol=0, atol=1e-6)


def test_ffn_without_autograd_and_with_dropout_match_the_plain_layers():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16)
    ffn = FFN(16, 64, dropout=0.5)
    with torch.no_grad():
        assert torch.allclose(ffn.eval()(x), _reference(ffn, x), rtol=0, atol=1e-6)
    ffn.train()
    torch.manual_seed(1)
    out = ffn(x)
    assert "_LinearReLULinearBackward" not in _graph_nodes(out)  # dropout: the module path
    torch.manual_seed(1)
    hidden = ffn.dropout(torch.relu(ffn.linear1(x)))
    assert torch.allclose(out, x + ffn.dropout(ffn.linear2(hidden)), rtol=0, atol=1e-6)


def test_ffn_trains_under_autocast():
    # The fused backward would run outside autocast on the forward's dtypes: under autocast the FFN takes the plain
    # layers, whose gradients autocast's own casts carry.
    torch.manual_seed(0)
    ffn = FFN(16, 64).train()
    params = list(ffn.parameters())
    x = torch.randn(2, 7, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ffn(x)
        expected = _reference(ffn, x)
    nodes = _graph_nodes(out)
    assert "_LinearReLULinearBackward" not in nodes and "ToCopyBackward0" in nodes  # bfloat16 products
    grad_output = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *params], grad_output)
    expected_grads = torch.autograd.grad(expected, [x, *params], grad_output)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1e-3)


def test_mlp_on_any_leading_shape_matches_its_layers():
    torch.manual_seed(0)
    mlp = MLP(16, 32, 4, 3)
    for shape in [(2, 5, 16), (7, 16), (16,), (2, 0, 16)]:
        x = torch.randn(shape)
        expected = mlp.layers[2](torch.relu(mlp.layers[1](torch.relu(mlp.layers[0](x)))))
        out = mlp(x)
        assert out.shape == shape[:-1] + (4,)
        assert torch.allclose(out, expected, rtol=0, atol=1e-6)
