"""FrozenBatchNorm folding: same outputs and gradients (up to float rounding), same state dict."""
import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling.backbone import BasicStem, ResNet
from torch.nn import functional as F

from focus_detr.layers.frozen_bn_folding import FrozenBNFoldingConv2d, enable_frozen_bn_folding


def _random_frozen_bn(channels, generator):
    norm = FrozenBatchNorm2d(channels)
    norm.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
    norm.bias.copy_(torch.randn(channels, generator=generator))
    norm.running_mean.copy_(torch.randn(channels, generator=generator))
    norm.running_var.copy_(torch.rand(channels, generator=generator) * 2 + 0.1)
    return norm


def _conv_pair(bias, activation=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    conv = Conv2d(8, 16, 3, padding=1, stride=2, bias=bias, norm=_random_frozen_bn(16, generator), activation=activation)
    reference = Conv2d(8, 16, 3, padding=1, stride=2, bias=bias, norm=FrozenBatchNorm2d(16), activation=activation)
    reference.load_state_dict(conv.state_dict())
    assert enable_frozen_bn_folding(conv) == 1 and type(conv) is FrozenBNFoldingConv2d
    return conv.eval(), reference.eval()


def _small_resnet(seed=0):
    torch.manual_seed(seed)
    stages = ResNet.make_default_stages(depth=50, stride_in_1x1=False, norm="FrozenBN")
    stages = [stage[:1] for stage in stages]  # one block per stage keeps the test fast
    backbone = ResNet(BasicStem(3, 64, norm="FrozenBN"), stages, out_features=["res3", "res4", "res5"])
    generator = torch.Generator().manual_seed(seed)
    for module in backbone.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.load_state_dict(_random_frozen_bn(module.num_features, generator).state_dict())
    return backbone


@pytest.mark.parametrize("bias", [False, True])
def test_folded_convolution_matches_conv_then_norm(bias):
    conv, reference = _conv_pair(bias, activation=F.relu)
    x = torch.randn(2, 8, 17, 23)
    with torch.no_grad():
        expected = reference(x)
        assert "_folded_cache" not in conv.__dict__
        folded = conv(x)
    assert "_folded_cache" in conv.__dict__  # the folded path ran
    assert torch.allclose(folded, expected, rtol=1e-5, atol=1e-5)


def test_backbone_state_dict_is_unchanged_and_outputs_match():
    backbone = _small_resnet()
    reference = _small_resnet()
    keys_before = list(backbone.state_dict())
    count = enable_frozen_bn_folding(backbone)
    assert count == sum(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules()) > 0
    assert list(backbone.state_dict()) == keys_before
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        folded, expected = backbone.eval()(x), reference.eval()(x)
    for name in expected:
        scale = expected[name].abs().max()
        assert (folded[name] - expected[name]).abs().max() <= 1e-5 * scale, name


def test_training_gradients_match_conv_then_norm():
    conv, reference = _conv_pair(bias=True)
    for training in (True, False):
        conv.train(training), reference.train(training)
        x = torch.randn(2, 8, 9, 9, requires_grad=True)
        x_reference = x.detach().clone().requires_grad_()
        out, expected = conv(x), reference(x_reference)  # grad enabled: the fold is differentiated through
        assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
        grad_out = torch.randn_like(out)
        out.backward(grad_out)
        expected.backward(grad_out)
        assert torch.allclose(x.grad, x_reference.grad, rtol=1e-5, atol=1e-5)
        for name in ("weight", "bias"):
            got, want = getattr(conv, name).grad, getattr(reference, name).grad
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max()), name
        conv.zero_grad(), reference.zero_grad()
    # trainable weights are folded afresh on every call, never through a cache that an optimizer step would stale
    assert "_folded_cache" not in conv.__dict__


def test_frozen_convolution_reuses_its_folded_weights_in_training():
    conv, reference = _conv_pair(bias=False)
    conv.weight.requires_grad_(False), reference.weight.requires_grad_(False)
    conv.train(), reference.train()
    x = torch.randn(1, 8, 9, 9, requires_grad=True)
    out = conv(x)
    assert "_folded_cache" in conv.__dict__
    out.sum().backward()
    expected_grad = x.grad.clone()
    x.grad = None
    reference(x).sum().backward()
    assert torch.allclose(expected_grad, x.grad, rtol=1e-5, atol=1e-5)


def test_folded_weights_follow_loaded_weights_and_are_dropped_in_training():
    conv, _ = _conv_pair(bias=False, seed=0)
    other, other_reference = _conv_pair(bias=False, seed=1)
    x = torch.randn(1, 8, 11, 11)
    with torch.no_grad():
        conv(x)
        conv.load_state_dict(other.state_dict())  # in-place copies: the cache must notice
        assert torch.allclose(conv(x), other_reference(x), rtol=1e-5, atol=1e-5)
    conv.train()
    assert "_folded_cache" not in conv.__dict__


def test_folded_weights_follow_in_place_edits_and_are_not_saved_with_the_module():
    # the cache is a second copy of the weights: torch.save(model) of an R50 grew from 198 to 292 MB after one
    # inference, and deepcopy (the EMA) copied it too
    import copy
    import io
    import pickle

    conv, reference = _conv_pair(bias=True, seed=0)
    x = torch.randn(1, 8, 11, 11)
    with torch.no_grad():
        conv(x)
        assert "_folded_cache" in conv.__dict__
        saved = io.BytesIO()
        torch.save(conv, saved)
        for restored in (pickle.loads(pickle.dumps(conv)), copy.deepcopy(conv),
                         torch.load(io.BytesIO(saved.getvalue()), weights_only=False)):
            assert "_folded_cache" not in restored.__dict__
            assert torch.allclose(restored(x), reference(x), rtol=1e-5, atol=1e-5)
        assert len(saved.getvalue()) < 1.5 * len(pickle.dumps(reference))
        for module in (conv, reference):
            module.weight.mul_(0.5)
            module.norm.running_var.mul_(4.0)
            module.bias.data = module.bias + 1  # assigned: a new tensor
        assert torch.allclose(conv(x), reference(x), rtol=1e-5, atol=1e-5)


def test_only_frozen_bn_convolutions_are_converted():
    plain = Conv2d(4, 4, 1, norm=None)
    group_norm = Conv2d(4, 4, 1, norm=torch.nn.GroupNorm(2, 4))
    assert enable_frozen_bn_folding(torch.nn.Sequential(plain, group_norm)) == 0
    assert type(plain) is Conv2d and type(group_norm) is Conv2d
