"""GroupNorm with the extension's channels-last CPU backward: nn.GroupNorm's outputs, its gradients up to rounding,
nn.GroupNorm itself wherever the kernel does not apply, and an in-place swap that keeps the state dict."""
import pytest
import torch
from torch import nn

from focus_detr.layers import group_norm
from focus_detr.layers.group_norm import GroupNorm, use_channels_last_group_norm

needs_kernel = pytest.mark.skipif(group_norm._KERNEL is None,
                                  reason="focus_detr.layers._C without the GroupNorm kernel")


def _pair(groups, channels, dtype=torch.float64, affine=True, seed=0):
    torch.manual_seed(seed)
    reference = nn.GroupNorm(groups, channels, affine=affine).to(dtype)
    if affine:
        nn.init.normal_(reference.weight)
        nn.init.normal_(reference.bias)
    ours = GroupNorm(groups, channels, affine=affine).to(dtype)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def _outputs_and_grads(module, x, grad):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    leaves = [x] + list(module.parameters())
    return [y] + list(torch.autograd.grad(y, leaves, grad))


@needs_kernel
@pytest.mark.parametrize("shape,groups",
                         [((2, 32, 9, 11), 32), ((3, 12, 5, 7), 4), ((1, 8, 1, 6), 2), ((2, 6, 4, 4), 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_channels_last_gradients_match_nn_group_norm(shape, groups, affine):
    reference, ours = _pair(groups, shape[1], affine=affine)
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).to(memory_format=torch.channels_last)
    grad = torch.randn(shape, dtype=torch.float64).to(memory_format=torch.channels_last)
    expected, got = _outputs_and_grads(reference, x, grad), _outputs_and_grads(ours, x, grad)
    assert torch.equal(got[0], expected[0])  # the forward is nn.GroupNorm's own
    for a, b in zip(got[1:], expected[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert got[1].is_contiguous(memory_format=torch.channels_last)


@pytest.fixture
def kernel_calls(monkeypatch):
    """A list that gets one entry per call of the extension's kernel."""
    calls = []
    kernel = group_norm._KERNEL
    monkeypatch.setattr(group_norm, "_KERNEL", lambda *args: calls.append(1) or kernel(*args))
    return calls


@needs_kernel
def test_kernel_runs_on_channels_last_input_and_float32_is_close(kernel_calls):
    reference, ours = _pair(8, 32, dtype=torch.float32)
    x = torch.randn(2, 32, 20, 24).to(memory_format=torch.channels_last)
    grad = torch.randn(2, 32, 20, 24).to(memory_format=torch.channels_last)
    for a, b in zip(_outputs_and_grads(ours, x, grad), _outputs_and_grads(reference, x, grad)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert kernel_calls == [1]


@needs_kernel
def test_kernel_gradients_are_the_same_for_any_thread_count():
    _, ours = _pair(4, 16, dtype=torch.float32)
    x = torch.randn(2, 16, 40, 30).to(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _outputs_and_grads(ours, x, grad)
        torch.set_num_threads(2)
        multi = _outputs_and_grads(ours, x, grad)
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for a, b in zip(single, multi))


@needs_kernel
def test_bfloat16_input_with_float32_parameters_as_under_autocast(kernel_calls):
    # autocast hands GroupNorm a bfloat16 convolution output and leaves its parameters float32: the kernel runs,
    # the forward is nn.GroupNorm's, and the gradients are as accurate as PyTorch's own (float32 accumulation)
    reference, ours = _pair(8, 32, dtype=torch.float32)
    x = (torch.randn(2, 32, 20, 24) * 3 + 1).to(memory_format=torch.channels_last).bfloat16()
    grad = torch.randn(2, 32, 20, 24).to(memory_format=torch.channels_last).bfloat16()
    got, native = _outputs_and_grads(ours, x, grad), _outputs_and_grads(reference, x, grad)
    assert kernel_calls == [1]
    assert torch.equal(got[0], native[0])
    assert [t.dtype for t in got] == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    assert got[1].is_contiguous(memory_format=torch.channels_last)
    reference64 = nn.GroupNorm(8, 32).double()
    reference64.load_state_dict(reference.state_dict())
    exact = _outputs_and_grads(reference64, x.double(), grad.double())
    for ours_grad, native_grad, exact_grad in zip(got[1:], native[1:], exact[1:]):
        ours_error = (ours_grad.double() - exact_grad).abs().max()
        native_error = (native_grad.double() - exact_grad).abs().max()
        assert ours_error <= 1.5 * native_error + 1e-6


@pytest.mark.parametrize("case", ["contiguous", "no_grad", "bfloat16 parameters", "float16"])
def test_nn_group_norm_runs_where_the_kernel_does_not_apply(monkeypatch, case):
    monkeypatch.setattr(group_norm, "_KERNEL", lambda *args: pytest.fail("the kernel ran"))
    dtype = {"bfloat16 parameters": torch.bfloat16, "float16": torch.float16}.get(case, torch.float32)
    reference, ours = _pair(4, 8, dtype=torch.float32 if case == "float16" else dtype)
    x = torch.randn(2, 8, 5, 6, dtype=dtype)
    if case != "contiguous":
        x = x.to(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    if case == "no_grad":
        with torch.no_grad():
            assert torch.equal(ours(x), reference(x))
        return
    for a, b in zip(_outputs_and_grads(ours, x, grad), _outputs_and_grads(reference, x, grad)):
        assert torch.equal(a, b)


def test_swap_keeps_parameters_names_and_state_dict():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8), nn.Sequential(nn.GroupNorm(2, 8, affine=False)))
    model.eval()
    weight = model[1].weight
    state = {k: v.clone() for k, v in model.state_dict().items()}
    use_channels_last_group_norm(model)
    assert type(model[1]) is GroupNorm and type(model[2][0]) is GroupNorm
    assert model[1].weight is weight and not model[1].training
    assert (model[2][0].num_groups, model[2][0].affine) == (2, False)
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_an_image_too_small_for_the_model_is_named_as_such():
    norm = GroupNorm(4, 4).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=r"^the image is too small for this model: a GroupNorm layer "
                                                          r"gets a single value per group"):
        norm(torch.zeros(1, 4, 1, 1))
    assert norm(torch.zeros(1, 4, 1, 2)).shape == (1, 4, 1, 2)
