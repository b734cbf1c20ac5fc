"""Box conversions and the generalised IoU against hand-computed values; the paired form is the diagonal of the
pairwise one."""
import pytest
import torch

from focus_detr.layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, generalized_box_iou, inverse_sigmoid


def test_conversions_are_each_others_inverse():
    boxes = torch.tensor([[0.5, 0.4, 0.2, 0.6], [0.1, 0.9, 0.0, 0.1]], dtype=torch.float64)
    xyxy = box_cxcywh_to_xyxy(boxes)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.1, 0.6, 0.7], [0.1, 0.85, 0.1, 0.95]], dtype=torch.float64))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), boxes)
    assert box_cxcywh_to_xyxy(boxes.view(2, 1, 4)).shape == (2, 1, 4)


def test_generalized_iou_of_known_pairs():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [3.0, 0.0, 4.0, 1.0]])
    giou = generalized_box_iou(a, b)
    # identical: 1; overlapping 1x1 of union 7 in a 3x3 hull: 1/7 - 2/9; disjoint 4 + 1 in a 4x2 hull: -3/8
    assert giou.tolist()[0] == pytest.approx([1.0, 1 / 7 - 2 / 9, -3 / 8], abs=1e-6)


def test_paired_is_the_diagonal_of_pairwise_with_its_gradient():
    torch.manual_seed(0)
    boxes1 = box_cxcywh_to_xyxy(torch.rand(6, 4, dtype=torch.float64)).requires_grad_()
    boxes2 = box_cxcywh_to_xyxy(torch.rand(6, 4, dtype=torch.float64))
    paired = generalized_box_iou(boxes1, boxes2, paired=True)
    diagonal = torch.diag(generalized_box_iou(boxes1, boxes2))
    assert paired.shape == (6,) and torch.equal(paired, diagonal)
    (grad_paired,) = torch.autograd.grad(paired.sum(), boxes1)
    (grad_diagonal,) = torch.autograd.grad(diagonal.sum(), boxes1)
    assert torch.equal(grad_paired, grad_diagonal)


def test_degenerate_boxes_are_rejected_unless_validation_is_off():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    flipped = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="boxes2 has boxes with x2 < x1"):
        generalized_box_iou(good, flipped)
    with pytest.raises(ValueError, match="boxes1"):
        generalized_box_iou(torch.tensor([[0.0, float("nan"), 1.0, 1.0]]), good, paired=True)
    assert generalized_box_iou(good, flipped, validate=False).shape == (1, 1)


def test_inverse_sigmoid_is_the_official_clamped_logit():
    x = torch.tensor([-0.5, 0.0, 0.25, 0.5, 1.0, 1.5])
    clamped = x.clamp(0, 1)
    expected = torch.log(clamped.clamp(min=1e-3) / (1 - clamped).clamp(min=1e-3))
    assert torch.equal(inverse_sigmoid(x), expected)
