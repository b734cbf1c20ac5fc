"""How the processes of a multi-process run raise together when one fails: the agreed error for user errors, the
failing process's own error and a RuntimeError elsewhere for bugs; and an evaluation whose share fails in one
process (here the all-gather of two processes is simulated)."""
import pytest
import torch

from focus_detr.engine import evaluation
from focus_detr.engine.agreement import ProcessFailed, failure_report, raise_agreed_failure
from focus_detr.engine.evaluation import EVALUATION_OUT_OF_MEMORY_REMEDY, EvaluationFailed


class Failed(ProcessFailed):
    pass


def test_nothing_is_raised_when_no_process_failed():
    raise_agreed_failure(None, [None, None, None], "to do it")


def test_a_user_error_in_one_process_is_raised_by_every_process_with_its_line_and_remedy():
    error = ValueError("cannot read image a.png: image file is truncated")
    error.remedy = "replace a.png"
    reports = [None, failure_report(error, Failed)]
    for own in (None, error):  # the process that did not fail, the one that did
        with pytest.raises(Failed) as raised:
            raise_agreed_failure(own, reports, "to do it")
        assert str(raised.value) == "cannot read image a.png: image file is truncated (process 1 of 2)"
        assert raised.value.remedy == "replace a.png"


def test_a_bug_in_one_process_is_its_own_error_there_and_a_runtime_error_naming_it_elsewhere():
    bug = KeyError("boxes")
    reports = [None, failure_report(bug, Failed), failure_report(ValueError("bad image"), Failed)]
    with pytest.raises(KeyError):
        raise_agreed_failure(bug, reports, "to do it")
    with pytest.raises(RuntimeError, match=r"^process 1 of 3 failed to do it: KeyError: 'boxes'$"):
        raise_agreed_failure(None, reports, "to do it")


def test_the_first_failing_process_decides_what_every_process_raises():
    class Other(ProcessFailed):
        pass

    reports = [None, failure_report(ValueError("a"), Other), failure_report(ValueError("b"), Failed)]
    with pytest.raises(Other, match=r"^a \(process 1 of 3\)$"):
        raise_agreed_failure(None, reports, "to do it")


class _Counting(evaluation.DatasetEvaluator):
    def __init__(self):
        self.evaluated = False

    def reset(self):
        pass

    def process(self, inputs, outputs):
        pass

    def evaluate(self):
        self.evaluated = True
        return {"bbox": {"AP": 1.0}}


@pytest.mark.parametrize("fails_here", [True, False])
def test_an_evaluation_share_out_of_memory_stops_every_process_before_any_metric(monkeypatch, fails_here):
    gathered = []

    def all_gather(report):
        gathered.append(report)
        other = None if fails_here else ("CUDA out of memory.", True, EVALUATION_OUT_OF_MEMORY_REMEDY,
                                         EvaluationFailed)
        return [report, other]

    monkeypatch.setattr(evaluation.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(evaluation.comm, "all_gather", all_gather)

    def model(inputs):
        if fails_here:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB.")
        return [{} for _ in inputs]

    evaluator = _Counting()
    with pytest.raises(EvaluationFailed) as raised:
        evaluation._inference_on_every_process(model, [[{"image_id": 1}], [{"image_id": 2}]], evaluator)
    assert len(gathered) == 1 and not evaluator.evaluated  # one agreement, then no metric from a partial share
    assert raised.value.remedy == EVALUATION_OUT_OF_MEMORY_REMEDY
    assert "out of memory" in str(raised.value) and str(raised.value).endswith(" of 2)")


def test_one_process_evaluates_without_any_collective(monkeypatch):
    monkeypatch.setattr(evaluation.comm, "all_gather", lambda report: pytest.fail("a collective in one process"))
    evaluator = _Counting()
    results = evaluation._inference_on_every_process(lambda inputs: [{} for _ in inputs], [[{"image_id": 1}]],
                                                     evaluator)
    assert results == {"bbox": {"AP": 1.0}} and evaluator.evaluated
