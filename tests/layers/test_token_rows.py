"""Whole tokens moved by index: the same values and gradients as gather / scatter with an expanded index, for one
image and for a batch, for token features of any shape."""
import pytest
import torch

from focus_detr.layers.token_rows import gather_tokens, scatter_tokens, token_rows


def _expanded(inds, tokens):
    return inds.view(*inds.shape, *([1] * (tokens.dim() - 2))).expand(-1, -1, *tokens.shape[2:])


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("feature_shape", [(), (5,), (4, 2)])
def test_gather_tokens_is_gather_with_the_same_gradient(batch, feature_shape):
    torch.manual_seed(0)
    tokens = torch.randn(batch, 11, *feature_shape, dtype=torch.float64, requires_grad=True)
    inds = torch.stack([torch.randperm(11)[:6] for _ in range(batch)])
    grad = torch.randn(batch, 6, *feature_shape, dtype=torch.float64)

    ours = gather_tokens(tokens, token_rows(inds, 11))
    (ours_grad,) = torch.autograd.grad(ours, tokens, grad)
    expected = tokens.gather(1, _expanded(inds, tokens))
    (expected_grad,) = torch.autograd.grad(expected, tokens, grad)
    assert torch.equal(ours, expected) and torch.equal(ours_grad, expected_grad)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("in_place", [False, True])
def test_scatter_tokens_is_scatter(batch, in_place):
    torch.manual_seed(0)
    tokens = torch.randn(batch, 11, 5)
    values = torch.randn(batch, 6, 5)
    inds = torch.stack([torch.randperm(11)[:6] for _ in range(batch)])
    expected = tokens.scatter(1, _expanded(inds, tokens), values)
    target = tokens.clone()
    ours = scatter_tokens(target, token_rows(inds, 11), values, in_place=in_place)
    assert torch.equal(ours, expected)
    assert (ours.data_ptr() == target.data_ptr()) == in_place
    assert torch.equal(target, expected if in_place else tokens)


def test_scatter_tokens_gradients_are_those_of_scatter():
    torch.manual_seed(0)
    tokens = torch.randn(2, 9, 4, dtype=torch.float64, requires_grad=True)
    values = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    inds = torch.stack([torch.randperm(9)[:3] for _ in range(2)])
    grad = torch.randn(2, 9, 4, dtype=torch.float64)
    ours = torch.autograd.grad(scatter_tokens(tokens, token_rows(inds, 9), values), (tokens, values), grad)
    expected = torch.autograd.grad(tokens.scatter(1, _expanded(inds, tokens), values), (tokens, values), grad)
    assert all(torch.equal(a, b) for a, b in zip(ours, expected))
