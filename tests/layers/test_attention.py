"""The direct multi-head attention is a drop-in for nn.MultiheadAttention(batch_first=True): same parameters,
same initialisation, same outputs, gradients, masks and dropout."""
import pytest
import torch
from torch import nn

from focus_detr.analysis.dispatch_counts import dispatch_counts
from focus_detr.layers import attention
from focus_detr.layers.attention import MultiheadAttention


def _pair(dropout=0.0):
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(32, 4, dropout=dropout, batch_first=True)
    torch.manual_seed(0)
    direct = MultiheadAttention(32, 4, dropout)
    return reference, direct


def _inputs(shared_keys):
    torch.manual_seed(1)
    query = torch.randn(2, 11, 32, requires_grad=True)
    key = query if shared_keys else torch.randn(2, 7, 32, requires_grad=True)
    value = torch.randn(2, key.shape[1], 32, requires_grad=True)
    mask = torch.rand(11, key.shape[1]) < 0.4
    mask[:, 0] = False  # every row keeps a key (the fully blocked row has its own test)
    return query, key, value, mask


def test_parameters_and_initialisation_equal_nn_multiheadattention():
    reference, direct = _pair()
    expected, got = reference.state_dict(), direct.state_dict()
    assert list(got) == list(expected) == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    direct.load_state_dict(expected, strict=True)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shared_keys", [True, False])
def test_outputs_and_gradients_equal_nn_multiheadattention(train, masked, shared_keys):
    reference, direct = _pair()
    reference.train(train)
    direct.train(train)
    query, key, value, mask = _inputs(shared_keys)
    mask = mask if masked else None
    results = []
    for module, call in ((reference, lambda: reference(query, key, value, attn_mask=mask, need_weights=False)[0]),
                         (direct, lambda: direct(query, key, value, mask))):
        out = call()
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        inputs = [query, value] if shared_keys else [query, key, value]
        grads = [t.grad.clone() for t in inputs] + [p.grad.clone() for p in module.parameters()]
        for t in inputs:
            t.grad = None
        results.append((out.detach(), grads))
    (expected, expected_grads), (got, got_grads) = results
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_grads, expected_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_mask_blocks_keys_and_fully_blocked_row_matches():
    reference, direct = _pair()
    query, key, value, mask = _inputs(shared_keys=True)
    mask[3] = True
    with torch.no_grad():
        expected = reference(query, key, value, attn_mask=mask, need_weights=False)[0]
        got = direct(query, key, value, mask)
        # True = blocked: changing a blocked value changes nothing
        changed = value.clone()
        changed[:, 5] += 100.0
        only_blocked = mask[:, 5].clone()
        moved = direct(query, key, changed, mask)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.allclose(got.nan_to_num(), expected.nan_to_num(), atol=1e-6)
    assert torch.allclose(moved[:, only_blocked], got[:, only_blocked], atol=1e-5)
    assert not torch.allclose(moved[:, ~only_blocked], got[:, ~only_blocked], atol=1e-3)


def test_dropout_in_training_only_and_as_nn_multiheadattention():
    reference, direct = _pair(dropout=0.5)
    query, key, value, _ = _inputs(shared_keys=True)
    with torch.no_grad():
        direct.eval()
        assert torch.equal(direct(query, key, value), direct(query, key, value))
        reference.train()
        direct.train()
        torch.manual_seed(5)
        expected = reference(query, key, value, need_weights=False)[0]
        torch.manual_seed(5)
        got = direct(query, key, value)
        assert not torch.allclose(got, direct(query, key, value))
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_fewer_operators_than_nn_multiheadattention():
    reference, direct = _pair()
    query, _, value, _ = _inputs(shared_keys=True)
    with torch.no_grad():
        expected = dispatch_counts(lambda: reference(query, query, value, need_weights=False)).operators
        got = dispatch_counts(lambda: direct(query, query, value)).operators
    assert got <= 0.65 * expected, (got, expected)


@pytest.mark.parametrize("args, message", [
    ((30, 4, 0.0), r"^MultiheadAttention: embed_dim \(30\) must be a positive multiple of num_heads \(4\)$"),
    ((0, 1, 0.0), r"^MultiheadAttention: embed_dim \(0\) must be a positive multiple of num_heads \(1\)$"),
    ((32, 4, 1.0), r"^MultiheadAttention: dropout must be in \[0, 1\), got 1.0$"),
])
def test_bad_settings_are_one_clear_error(args, message):
    with pytest.raises(ValueError, match=message):
        MultiheadAttention(*args)


@pytest.mark.parametrize("needs_grad", [True, False])
def test_bfloat16_autocast_on_cpu_attends_in_float32_when_training(monkeypatch, needs_grad):
    # PyTorch's bfloat16 attention backward on the CPU is 3-4x slower than float32 at the model's lengths: with
    # gradients the bfloat16 projections are attended in float32; inference keeps bfloat16
    _, direct = _pair()
    query, key, value, mask = _inputs(shared_keys=True)
    seen = []
    original = attention.F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda q, k, v, *args: seen.append((q.dtype, k.dtype, v.dtype)) or original(q, k, v, *args))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(needs_grad):
        out = direct(query, key, value, mask)
    expected_dtype = torch.float32 if needs_grad else torch.bfloat16
    assert seen == [(expected_dtype,) * 3]
    assert out.dtype == torch.bfloat16  # the output projection stays under autocast
    reference = direct(query, key, value, mask)
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)
    if needs_grad:
        out.float().sum().backward()
        assert query.grad.dtype == torch.float32 and torch.isfinite(query.grad).all()
