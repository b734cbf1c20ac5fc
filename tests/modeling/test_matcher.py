import itertools
import math

import pytest
import torch

from focus_detr.layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from focus_detr.modeling.matcher import HungarianMatcher


def _random_boxes(n, generator):
    centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centre, size], dim=-1)


def test_perfect_predictions_match_their_targets():
    generator = torch.Generator().manual_seed(0)
    num_queries, num_classes = 10, 5
    gt_boxes = _random_boxes(3, generator)
    gt_labels = torch.tensor([4, 0, 2])
    query_of_gt = torch.tensor([7, 2, 5])  # GT j is predicted exactly by query query_of_gt[j]
    pred_boxes = _random_boxes(num_queries, generator)
    pred_logits = torch.full((num_queries, num_classes), -6.0)
    pred_boxes[query_of_gt] = gt_boxes
    pred_logits[query_of_gt, gt_labels] = 6.0

    indices = HungarianMatcher()(pred_logits[None], pred_boxes[None], [{"labels": gt_labels, "boxes": gt_boxes}])

    query_idx, target_idx = indices[0]
    assert query_idx.dtype == torch.int64 and target_idx.dtype == torch.int64
    assert dict(zip(target_idx.tolist(), query_idx.tolist())) == {0: 7, 1: 2, 2: 5}


def _reference_cost(logits, boxes, labels, target_boxes, alpha=0.25, gamma=2.0):
    """Entry-by-entry cost written from spec 7.1 with python floats."""
    cost = torch.zeros(len(boxes), len(target_boxes), dtype=torch.float64)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes.double()), box_cxcywh_to_xyxy(target_boxes.double()))
    for q in range(len(boxes)):
        for t in range(len(target_boxes)):
            p = 1 / (1 + math.exp(-float(logits[q, labels[t]])))
            pos = alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
            neg = (1 - alpha) * p**gamma * -math.log(1 - p + 1e-8)
            l1 = float((boxes[q].double() - target_boxes[t].double()).abs().sum())
            cost[q, t] = 5 * l1 + 2 * (pos - neg) + 2 * -float(giou[q, t])
    return cost


def test_assignment_is_the_minimum_cost_one_to_one_matching():
    generator = torch.Generator().manual_seed(1)
    num_queries, num_targets, num_classes = 5, 3, 4
    logits = torch.randn(2, num_queries, num_classes, generator=generator) * 2
    boxes = torch.stack([_random_boxes(num_queries, generator) for _ in range(2)])
    targets = [
        {"labels": torch.tensor([0, 3, 3]), "boxes": _random_boxes(num_targets, generator)},
        {"labels": torch.tensor([1, 2]), "boxes": _random_boxes(2, generator)},
    ]
    matcher = HungarianMatcher()
    indices = matcher(logits, boxes, targets)
    for b, target in enumerate(targets):
        cost = _reference_cost(logits[b], boxes[b], target["labels"], target["boxes"])
        torch.testing.assert_close(
            matcher.cost_matrix(logits[b], boxes[b], target["labels"], target["boxes"]).double(),
            cost,
            rtol=1e-5,
            atol=1e-5,
        )
        n = len(target["labels"])
        best = min(
            sum(float(cost[q, t]) for t, q in enumerate(perm)) for perm in itertools.permutations(range(num_queries), n)
        )
        query_idx, target_idx = indices[b]
        assert sorted(target_idx.tolist()) == list(range(n))
        assert len(set(query_idx.tolist())) == n
        assert sum(float(cost[q, t]) for q, t in zip(query_idx.tolist(), target_idx.tolist())) == pytest.approx(
            best, abs=1e-6
        )


def test_a_batch_is_matched_as_each_image_alone():
    """The batch's costs are computed in one matrix; every image must still get the assignment it gets alone."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, 4, generator=generator)
    boxes = torch.stack([_random_boxes(7, generator) for _ in range(3)])
    targets = [
        {"labels": torch.tensor([2, 0, 3]), "boxes": _random_boxes(3, generator)},
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
        {"labels": torch.tensor([1, 1, 0, 2, 3]), "boxes": _random_boxes(5, generator)},
    ]
    matcher = HungarianMatcher()
    batched = matcher(logits, boxes, targets)
    for b, target in enumerate(targets):
        ((query_idx, target_idx),) = matcher(logits[b : b + 1], boxes[b : b + 1], [target])
        assert torch.equal(batched[b][0], query_idx) and torch.equal(batched[b][1], target_idx)


def test_images_without_targets_give_empty_indices():
    logits = torch.randn(2, 4, 3)
    boxes = _random_boxes(8, torch.Generator().manual_seed(2)).view(2, 4, 4)
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
        {"labels": torch.tensor([1]), "boxes": boxes[1, 2:3].clone()},
    ]
    indices = HungarianMatcher()(logits, boxes, targets)
    assert indices[0][0].numel() == 0 and indices[0][1].numel() == 0
    assert indices[0][0].dtype == torch.int64
    assert indices[1][1].tolist() == [0] and indices[1][0].numel() == 1
    none = HungarianMatcher()(logits, boxes, [targets[0], targets[0]])
    assert [(q.numel(), t.numel(), q.dtype) for q, t in none] == [(0, 0, torch.int64)] * 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cost_class": -1.0}, "cost_class"),
        ({"cost_bbox": -0.5}, "cost_bbox"),
        ({"cost_class": 0.0, "cost_bbox": 0.0, "cost_giou": 0.0}, "at least one"),
        ({"alpha": 1.5}, "alpha"),
        ({"gamma": -2.0}, "gamma"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HungarianMatcher(**kwargs)


def test_bad_inputs_raise_clear_errors():
    matcher = HungarianMatcher()
    logits, boxes = torch.randn(1, 4, 3), torch.rand(1, 4, 4) * 0.5 + 0.1
    good = {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    with pytest.raises(ValueError, match="targets for a batch"):
        matcher(logits, boxes, [good, good])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        matcher(logits, boxes, [{"labels": torch.tensor([3]), "boxes": good["boxes"]}])
    with pytest.raises(ValueError, match="disagree"):
        matcher(logits, boxes[:, :3], [good])
    for bad_box in ([0.5, 0.5, -0.1, 0.2], [float("nan"), 0.5, 0.1, 0.2]):
        with pytest.raises(ValueError, match="target boxes must be finite cxcywh with sizes >= 0"):
            matcher(logits, boxes, [{"labels": good["labels"], "boxes": torch.tensor([bad_box])}])


def test_non_finite_predictions_are_matched_and_leave_the_other_images_alone():
    # a diverging run: its loss is not finite, which the trainer reports in every process; an error raised here
    # would stop one process of a multi-process run alone
    matcher = HungarianMatcher()
    logits, boxes = torch.randn(2, 4, 3), torch.rand(2, 4, 4) * 0.5 + 0.1
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]])}] * 2
    expected = matcher(logits, boxes, targets)
    broken_logits, broken_boxes = logits.clone(), boxes.clone()
    broken_boxes[0, 1, 2], broken_logits[0, 2, 0] = float("nan"), float("inf")
    indices = matcher(broken_logits, broken_boxes, targets)
    assert [len(q) for q, _ in indices] == [2, 2] and sorted(indices[0][1].tolist()) == [0, 1]
    assert all(torch.equal(a, b) for a, b in zip(indices[1], expected[1]))
