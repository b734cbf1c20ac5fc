"""torchvision's ImageNet ResNet weights (the R101 configs' ``train.init_checkpoint``) load into detectron2's ResNet
backbone as the same network: its features equal torchvision's own forward."""
import pytest
import torch
import torchvision
from detectron2.modeling.backbone import BasicStem, ResNet
from torch import nn

from focus_detr.checkpoint import FocusDETRCheckpointer
from focus_detr.checkpoint.torchvision_resnet import is_torchvision_resnet


class _BackboneOnly(nn.Module):
    """The backbone under the detector's attribute name, as the checkpointer sees ``FocusDETR``."""

    def __init__(self, depth):
        super().__init__()
        self.backbone = ResNet(
            stem=BasicStem(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=ResNet.make_default_stages(depth=depth, norm="FrozenBN",
                                              **({"stride_in_1x1": False} if depth >= 50 else {})),
            out_features=["res2", "res3", "res4", "res5"],
        )


def _torchvision_features(net, image):
    x = net.maxpool(net.relu(net.bn1(net.conv1(image))))
    features = []
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = stage(x)
        features.append(x)
    return features


def _randomise_batch_norm_statistics(net):
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_weights_give_torchvision_features(tmp_path, depth, caplog):
    torch.manual_seed(depth)
    net = getattr(torchvision.models, f"resnet{depth}")().eval()
    _randomise_batch_norm_statistics(net)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(net.state_dict(), path)  # torchvision's files are this: one flat state dict, classifier included
    model = _BackboneOnly(depth).eval()
    with caplog.at_level("INFO"):
        FocusDETRCheckpointer(model).load(str(path))
    assert "torchvision's ResNet" in caplog.text
    image = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours = model.backbone(image)
        theirs = _torchvision_features(net, image)
    for name, expected in zip(["res2", "res3", "res4", "res5"], theirs):
        torch.testing.assert_close(ours[name], expected, rtol=1e-4, atol=1e-4)


def test_only_torchvision_resnet_keys_are_taken_for_torchvision_ones():
    state = torchvision.models.resnet18().state_dict()
    assert is_torchvision_resnet(state)
    assert not is_torchvision_resnet({**state, "extra_head.weight": torch.zeros(1)})  # another model's: left as is
    assert not is_torchvision_resnet({"backbone." + key: value for key, value in state.items()})
