import pytest
import torch

from focus_detr.analysis.forced_decisions import ForcedDecisions, check_ranking, ranking_gap
from focus_detr.analysis.parity import Report


def test_ranking_check_accepts_ties_in_either_order_only():
    report = Report()
    scores = torch.tensor([[5.0, 3.0, 3.0, 1.0]])
    ours = torch.tensor([[0, 1]])
    assert check_ranking(report, "tie", scores, ours, torch.tensor([[0, 2]]), ordered=True)
    assert check_ranking(report, "set order", scores, torch.tensor([[1, 0]]), ours, ordered=False)
    assert not check_ranking(report, "worse", scores, ours, torch.tensor([[0, 3]]), ordered=False)
    assert not check_ranking(report, "order", scores, ours, torch.tensor([[1, 0]]), ordered=True)
    assert [row[3] for row in report.rows] == [True, True, False, False]


def test_padding_scores_neither_widen_the_tolerance_nor_count_as_a_gap():
    # -inf: padded tokens. They tie among themselves; the tolerance comes from the finite scores only.
    scores = torch.tensor([[3.0, 2.0, float("-inf"), float("-inf")]])
    differ, gap, tolerance = ranking_gap(scores, torch.tensor([[0, 2, 3]]), torch.tensor([[0, 3, 2]]), ordered=True)
    assert (differ, gap) == (2, 0.0) and tolerance == pytest.approx(3e-4)
    differ, gap, tolerance = ranking_gap(scores, torch.tensor([[0, 1]]), torch.tensor([[0, 2]]), ordered=True)
    assert differ == 1 and gap > tolerance


def test_queries_are_found_by_their_boxes_and_taken_in_the_official_order():
    report = Report()
    # Tokens 1 and 2 tie; the official run ranked token 2 first.
    scores = torch.tensor([[4.0, 2.0, 2.0, 0.5]])
    boxes = torch.tensor([[[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1], [0.6, 0.5, 0.2, 0.3], [0.9, 0.9, 0.1, 0.1]]])
    official = boxes[:, [0, 2, 1]] + 1e-6
    forced = ForcedDecisions(None, report, "", query_boxes=official)
    forced._proposal_boxes = lambda: boxes
    chosen = forced._query_chooser(lambda s: s.topk(3, dim=1)[1])(scores)
    assert chosen.tolist() == [[0, 2, 1]]
    assert report.ok
