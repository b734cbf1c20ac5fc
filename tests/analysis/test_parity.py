import torch

from focus_detr.analysis.parity import Report, compare_losses, match_detections, weight_mismatch


def _detections(labels, scores, boxes):
    return {"labels": torch.tensor(labels), "scores": torch.tensor(scores), "boxes_xyxy": torch.tensor(boxes)}


def test_detections_with_near_equal_scores_match_in_either_order_each_used_once():
    box_a, box_b = [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]
    expected = _detections([1, 1], [0.5, 0.5], [box_a, box_b])
    swapped = _detections([1, 1], [0.5, 0.5 - 1e-6], [box_b, box_a])
    assert match_detections(swapped, expected, box_tol_px=0.1) == (2, 2)
    # one of ours cannot stand in for two of theirs, nor a detection of another class or place
    assert match_detections(_detections([1], [0.5], [box_a]), expected, box_tol_px=0.1) == (1, 2)
    assert match_detections(_detections([2, 1], [0.5, 0.5], [box_a, [0.0, 0.0, 10.0, 11.0]]), expected, 0.1) == (0, 2)


def test_losses_are_compared_relatively_and_a_missing_one_fails():
    report = Report()
    compare_losses(report, "train", {"loss_a": 2.0001, "loss_zero": 0.0}, {"loss_a": 2.0, "loss_zero": 0.0,
                                                                         "loss_b": 1.0})
    rows = {row[0]: row for row in report.rows}
    assert rows["train loss_a rel. error"][3] and abs(rows["train loss_a rel. error"][1] - 5e-5) < 1e-9
    assert rows["train loss_zero rel. error"][3]
    assert rows["train loss_b"][1:] == ("missing", "present", False)
    assert not report.ok


def test_weights_that_do_not_fit_the_model_say_what_differs():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    assert weight_mismatch(model, model.state_dict()) is None
    wrong = {"0.weight": torch.zeros(3, 4), "1.bias": torch.zeros(3)}
    assert weight_mismatch(model, wrong) == (
        "1 missing keys, e.g. 0.bias; 1 unexpected keys, e.g. 1.bias; 1 shape mismatches, e.g. 0.weight"
    )
