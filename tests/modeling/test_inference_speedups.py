"""The model's speed mechanisms change neither its outputs (beyond float rounding) nor its state dict."""
import torch

from conftest import build_tiny_model


def _fixture_model(parity_fixture, **overrides):
    from focus_detr.checkpoint import FocusDETRCheckpointer

    torch.manual_seed(0)
    model = build_tiny_model(**overrides)
    FocusDETRCheckpointer(model).load_model_state(parity_fixture["state_dict"])
    return model.eval()


def _raw_outputs(model, parity_fixture):
    items = [{"image": item["image"]} for item in parity_fixture["inputs"]]
    with torch.no_grad():
        logits, boxes = model.predict(model.run_transformer(model.preprocess_image(items)))
    return logits[-1], boxes[-1]


def test_folding_and_channels_last_keep_outputs_and_state_dict(parity_fixture):
    fast = _fixture_model(parity_fixture)
    plain = _fixture_model(parity_fixture, **{"model.fold_frozen_batchnorm": False, "model.backbone_channels_last": False})
    from focus_detr.layers.frozen_bn_folding import FrozenBNFoldingConv2d

    assert fast.backbone_channels_last and not plain.backbone_channels_last
    assert any(isinstance(m, FrozenBNFoldingConv2d) for m in fast.modules())
    assert not any(isinstance(m, FrozenBNFoldingConv2d) for m in plain.modules())
    assert list(fast.state_dict()) == list(plain.state_dict())
    fast_logits, fast_boxes = _raw_outputs(fast, parity_fixture)
    plain_logits, plain_boxes = _raw_outputs(plain, parity_fixture)
    assert torch.allclose(fast_logits, plain_logits, atol=1e-4)
    assert torch.allclose(fast_boxes, plain_boxes, atol=1e-5)


def test_training_losses_and_gradients_do_not_depend_on_folding(parity_fixture):
    from detectron2.structures import Boxes, Instances

    items = []
    for item in parity_fixture["inputs"]:
        instances = item["instances"]
        gt = Instances(tuple(item["image"].shape[-2:]), gt_boxes=Boxes(instances["gt_boxes"].clone()),
                       gt_classes=instances["gt_classes"].clone())
        items.append({"image": item["image"], "instances": gt})
    losses, grads = [], []
    for fold in (True, False):
        model = _fixture_model(parity_fixture, **{"model.fold_frozen_batchnorm": fold}).train()
        torch.manual_seed(0)
        losses.append(model(items))
        sum(losses[-1].values()).backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    for name in losses[0]:
        assert torch.allclose(losses[0][name], losses[1][name], rtol=1e-4, atol=1e-6), name
    assert grads[0].keys() == grads[1].keys() and any(name.startswith("backbone.") for name in grads[0])
    # float rounding only: relative to the largest gradient (a few parameters' gradients are small sums of
    # large, cancelling terms, e.g. the selector's modulation weights)
    scale = max(grad.abs().max() for grad in grads[1].values())
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], rtol=1e-3, atol=1e-6 * scale), name


def test_inference_without_autograd_matches_with_autograd(parity_fixture):
    # The no-grad path updates the encoder memory and the FFN / MLP activations in place; with two images of
    # different foreground budgets (the fixture's), the result must equal the out-of-place path (up to rounding).
    model = _fixture_model(parity_fixture, **{"model.fold_frozen_batchnorm": False})
    items = [{"image": item["image"]} for item in parity_fixture["inputs"]]
    images = model.preprocess_image(items)
    with torch.no_grad():
        in_place = model.predict(model.run_transformer(images))
    with torch.enable_grad():
        out_of_place = model.predict(model.run_transformer(images))
    assert out_of_place[0].requires_grad
    for fast, reference in zip(in_place, out_of_place):
        assert torch.allclose(fast, reference.detach(), atol=1e-5)
