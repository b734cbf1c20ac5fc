import math

import pytest
import torch

from conftest import fixture_targets
from focus_detr.layers.box_ops import box_xyxy_to_cxcywh
from focus_detr.modeling.foreground_targets import ForegroundTargetAssigner, foreground_focal_loss



def _target(boxes_xyxy, image_size):
    h, w = image_size
    boxes = torch.tensor(boxes_xyxy, dtype=torch.float32).view(-1, 4)
    return {
        "labels": torch.zeros(len(boxes), dtype=torch.int64),
        "boxes": box_xyxy_to_cxcywh(boxes / torch.tensor([w, h, w, h], dtype=torch.float32)),
        "image_size": image_size,
    }


def _shapes(h, w, strides=(8, 16, 32, 64)):
    return torch.tensor([[math.ceil(h / s), math.ceil(w / s)] for s in strides], dtype=torch.int64)


def _positives(targets_row, spatial_shapes):
    """{(level, row, col)} of positive tokens."""
    out, start = set(), 0
    for level, (h, w) in enumerate(spatial_shapes.tolist()):
        for index in torch.nonzero(targets_row[start : start + h * w]).flatten().tolist():
            out.add((level, index // w, index % w))
        start += h * w
    return out


def test_small_box_is_assigned_to_the_finest_level_tokens_strictly_inside():
    shapes = _shapes(64, 64)
    # centres of level 0 are 4, 12, 20, ..., 60; the box edges 12 and 44 fall exactly on centres
    targets = ForegroundTargetAssigner()(shapes, [_target([12, 20, 44, 40], (64, 64))])
    assert targets.shape == (1, 64 + 16 + 4 + 1) and targets.dtype == torch.float32
    # strictly inside: x in {20, 28, 36} (cols 2..4), y in {28, 36} (rows 3..4)
    expected = {(0, row, col) for row in (3, 4) for col in (2, 3, 4)}
    assert _positives(targets[0], shapes) == expected


def test_box_size_selects_the_level():
    shapes = _shapes(512, 512)
    assigner = ForegroundTargetAssigner()
    # 200 px box: every inside token has max(l, t, r, b) in [100, 200) -> levels 1 (64, 128] and 2 (128, 256] only
    positives = _positives(assigner(shapes, [_target([100, 100, 300, 300], (512, 512))])[0], shapes)
    assert {level for level, _, _ in positives} == {1, 2}
    assert (1, 12, 12) in positives  # centre (200, 200): distances all 100
    assert (2, 3, 3) in positives  # centre (112, 112): distances 12, 12, 188, 188
    assert (2, 6, 6) not in positives  # centre (208, 208): max distance 108 belongs to level 1
    # 500 px box: every inside token has max distance > 256 -> all 8 x 8 tokens of level 3 and nothing else
    positives = _positives(assigner(shapes, [_target([0, 0, 500, 500], (512, 512))])[0], shapes)
    assert positives == {(3, row, col) for row in range(8) for col in range(8)}


def _reference_targets(shapes, strides, ranges, boxes_abs):
    """Per-token loop written from spec 5.1."""
    rows = []
    for (h, w), s, (low, high) in zip(shapes.tolist(), strides, ranges):
        for row in range(h):
            for col in range(w):
                x, y = col * s + s // 2, row * s + s // 2
                positive = False
                for x1, y1, x2, y2 in boxes_abs.tolist():
                    d = (x - x1, y - y1, x2 - x, y2 - y)
                    if min(d) > 0 and low < max(d) <= high:
                        positive = True
                rows.append(float(positive))
    return torch.tensor(rows)


def test_matches_a_per_token_reference_on_random_boxes():
    generator = torch.Generator().manual_seed(3)
    image_size = (300, 420)
    shapes = _shapes(*image_size)
    assigner = ForegroundTargetAssigner()
    x1y1 = torch.rand(6, 2, generator=generator) * torch.tensor([380.0, 260.0])
    wh = torch.rand(6, 2, generator=generator) * torch.tensor([400.0, 300.0]) + 4
    boxes = torch.cat([x1y1, (x1y1 + wh).minimum(torch.tensor([420.0, 300.0]))], dim=-1).round()
    targets = assigner(shapes, [_target(boxes.tolist(), image_size)])
    expected = _reference_targets(shapes, assigner.strides, assigner.scale_ranges, boxes)
    assert targets[0].sum() > 0
    torch.testing.assert_close(targets[0], expected, rtol=0, atol=0)


def test_images_without_boxes_give_zero_targets_even_for_a_whole_batch():
    shapes = _shapes(96, 128)
    empty = _target([], (96, 128))
    targets = ForegroundTargetAssigner()(shapes, [empty, empty])
    assert targets.shape == (2, int((shapes[:, 0] * shapes[:, 1]).sum())) and targets.sum() == 0
    mixed = ForegroundTargetAssigner()(shapes, [empty, _target([10, 10, 60, 50], (96, 128))])
    assert mixed[0].sum() == 0 and mixed[1].sum() > 0


def test_invalid_configuration_and_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"^ForegroundTargetAssigner: scale_ranges has 1 entries but strides has 2$"):
        ForegroundTargetAssigner(strides=(8, 16), scale_ranges=((-1, 64),))
    with pytest.raises(ValueError, match=r"^ForegroundTargetAssigner: strides must be positive ints, got \(8, 0\)$"):
        ForegroundTargetAssigner(strides=(8, 0), scale_ranges=((-1, 64), (64, 128)))
    with pytest.raises(ValueError, match=r"scale range must be \(lo, hi\) with lo < hi, got \(64, 64\)$"):
        ForegroundTargetAssigner(strides=(8,), scale_ranges=((64, 64),))
    with pytest.raises(ValueError, match=r"spatial_shapes has 3 levels but 4 strides are configured$"):
        ForegroundTargetAssigner()(_shapes(64, 64)[:3], [_target([1, 1, 9, 9], (64, 64))])


def _official_select_loss(logits, targets, alpha=0.25, gamma=2.0):
    """The official compute_cls_loss / focal_loss_from_logits, term by term (spec 5.2)."""
    values = []
    for pred, target in zip(logits.squeeze(-1), targets):
        p = pred.sigmoid()
        pt = p * target + (1.0 - p) * (1.0 - target)
        w = alpha * target + (1.0 - alpha) * (1.0 - target)
        loss = (-w * torch.pow(1.0 - pt, gamma) * torch.log(pt)).sum()
        values.append(loss / target.sum().clamp(min=1))
    return torch.stack(values).mean()


def test_focal_loss_equals_the_official_formula_and_stays_finite_where_it_is_not():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 50, 1, generator=generator) * 3
    targets = (torch.rand(3, 50, generator=generator) < 0.2).float()
    targets[2] = 0  # an image without positives is normalised by 1
    torch.testing.assert_close(
        foreground_focal_loss(logits, targets), _official_select_loss(logits, targets), rtol=1e-6, atol=0
    )

    extreme = logits.clone().requires_grad_(True)
    with torch.no_grad():
        extreme[0, 0, 0] = 40.0  # official: sigmoid == 1 exactly -> log(0) = -inf for a negative token
        targets[0, 0] = 0
    assert not torch.isfinite(_official_select_loss(extreme.detach(), targets))
    loss = foreground_focal_loss(extreme, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(extreme.grad).all()
    # the saturated token contributes about 0.75 * 40 (its BCE) / 1 positive-count of image 0, averaged over 3 images
    assert loss.item() > 0.75 * 40 / max(targets[0].sum().item(), 1) / 3


def test_focal_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="foreground_focal_loss"):
        foreground_focal_loss(torch.zeros(2, 10, 1), torch.zeros(2, 11))
    with pytest.raises(ValueError, match=r"\(B, N, 1\)"):
        foreground_focal_loss(torch.zeros(2, 10, 2), torch.zeros(2, 10))


@pytest.mark.parametrize("run", ["no_dn", "dn"])
def test_select_loss_reproduces_the_official_fixture(parity_fixture, run):
    fixture = parity_fixture
    record = fixture["train_losses"][run]
    debug = record["debug"]
    foreground = ForegroundTargetAssigner()(debug["spatial_shapes"], fixture_targets(fixture))
    select_loss = foreground_focal_loss(debug["temp_backbone_mask_prediction"], foreground) * 1.5
    expected = record["losses_tensors"]["select_loss"]
    torch.testing.assert_close(select_loss, expected, rtol=1e-6, atol=0)


def test_python_shapes_give_the_targets_of_a_shape_tensor_on_the_requested_device():
    # the model passes its level shapes as Python ints: nothing is read back from a GPU
    shapes = _shapes(96, 128)
    targets = [_target([10, 10, 60, 50], (96, 128)), _target([0, 0, 90, 120], (96, 128))]
    expected = ForegroundTargetAssigner()(shapes, targets)
    from_ints = ForegroundTargetAssigner()(shapes.tolist(), targets, device="cpu")
    assert torch.equal(from_ints, expected) and expected.sum() > 0
    # again (the token grid comes from the cache now), and without boxes
    assert torch.equal(ForegroundTargetAssigner()(shapes.tolist(), targets), expected)
    empty = {"boxes": torch.zeros(0, 4), "image_size": (96, 128)}
    assert not ForegroundTargetAssigner()(shapes.tolist(), [empty], device="cpu").any()


@pytest.mark.parametrize("scale_ranges, why", [
    # large objects labelled on the finest level: AP 0.026 where the official ranges gave 0.059, without a word
    ([[256, 999999], [128, 256], [64, 128], [-1, 64]], r"\(256, 999999\) then \(128, 256\) goes back"),
    # objects of 10 to 500 pixels background on every level
    ([[0, 10], [500, 600], [700, 800], [900, 1000]], r"\(0, 10\) then \(500, 600\) leaves object sizes \(10, 500\) on "
                                                     r"no level"),
])
def test_scale_ranges_out_of_order_or_with_gaps_are_refused(scale_ranges, why):
    with pytest.raises(ValueError, match=r"^ForegroundTargetAssigner: scale_ranges must run from the finest level to "
                                         r"the coarsest, each \(lo, hi\) starting where the one before ends: " + why):
        ForegroundTargetAssigner(scale_ranges=scale_ranges)
    ForegroundTargetAssigner(scale_ranges=[[-1, 80], [64, 128], [128, 256], [256, 999999]])  # overlaps are a choice
