import pytest
import torch

from focus_detr.analysis.parity import (
    Report,
    compare_losses,
    load_fixture,
    match_detections,
    missing_sections,
    weight_mismatch,
)


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


def test_a_report_that_compared_nothing_is_not_parity():
    assert not Report().ok


def _fixture_parts(images=2):
    single = {"pred_logits": torch.zeros(1), "pred_boxes": torch.zeros(1), "postprocessed": [{}]}
    return {
        "state_dict": {},
        "inputs": [{}] * images,
        "eval_outputs": {"single": [dict(single) for _ in range(images)]},
        "train_losses": {"no_dn": {"losses": {"loss_class": 1.0}}, "dn": {"losses": {"loss_class": 1.0}}},
    }


def test_a_fixture_without_what_the_check_compares_is_named_for_each_missing_part():
    assert missing_sections(_fixture_parts()) == []
    bare = {"state_dict": {}, "inputs": [{}]}
    assert missing_sections(bare) == [
        "eval_outputs['single'] (the official outputs of each image)",
        "train_losses (the official training losses per run; {} for inference only)",
    ]
    assert missing_sections(dict(_fixture_parts(), train_losses={})) == []  # inference only: allowed, and said
    no_inputs = dict(_fixture_parts(), inputs=[])
    assert missing_sections(no_inputs) == ["inputs (no images)"]
    short = _fixture_parts()
    short["eval_outputs"]["single"].pop()
    assert missing_sections(short) == ["eval_outputs['single'] has 1 entries for 2 inputs"]
    partial = _fixture_parts()
    del partial["eval_outputs"]["single"][1]["pred_logits"]
    partial["train_losses"]["dn"]["losses"] = {}
    assert missing_sections(partial) == [
        "eval_outputs['single'][1] has no pred_logits",
        "the losses of train_losses 'dn'",
    ]


def test_a_fixture_file_missing_a_section_is_refused_on_loading(tmp_path):
    fixture = _fixture_parts()
    del fixture["train_losses"]
    path = tmp_path / "partial.pt"
    torch.save(fixture, path)
    with pytest.raises(ValueError, match=r"^cannot use fixture .*partial\.pt: it lacks what the parity check compares: "
                                         r"train_losses \(the official training losses per run; \{\} for inference "
                                         r"only\)$"):
        load_fixture(str(path))
