"""metrics.json and TensorBoard across a resume: each iteration's records appear once (a resumed run logs the
iterations after its checkpoint again), a finished run's final evaluation survives a longer continuation, and a last
line cut short by a crash or a full disk is cut off before the resumed run appends, so its records start on a line of
their own and the curves read every one of them."""
import json
import logging

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine_test_utils import TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)

from focus_detr.analysis.training_curves import read_metrics
from focus_detr.engine.metrics_log import cut_incomplete_last_line

TORN_RECORD = '{"data_time": 0.01, "iterati'


def _records(iterations):
    return "".join(json.dumps({"iteration": i, "total_loss": 1.0}) + "\n" for i in iterations)


def _train(train_net, output_dir, *extra, resume=False):
    argv = ["--config-file", TOY_CONFIG] + (["--resume"] if resume else []) + [f"train.output_dir={output_dir}", *extra]
    train_net.main(train_net.default_argument_parser().parse_args(argv))


def _iterations(output_dir, key):
    """The iterations of ``key``'s records in metrics.json and in the TensorBoard events."""
    with open(output_dir / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    events = EventAccumulator(str(output_dir))
    events.Reload()
    return [r["iteration"] for r in records if key in r], [event.step for event in events.Scalars(key)]


def test_a_resumed_runs_records_show_each_iteration_once(train_net, toy_dataset, tmp_path):
    # metrics.json and TensorBoard showed the iterations after the last checkpoint twice (15, 16, 17, 15, 16, ...),
    # with other values: detectron2's writers append and its smoothing window restarts
    _train(train_net, tmp_path, "train.max_iter=10", "train.checkpointer.period=5", "train.log_period=1",
           "dataloader.evaluator=null")
    # a run killed after iteration 9 and before its final checkpoint: the resume starts at 5
    (tmp_path / "model_final.pth").unlink()
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth")
    _train(train_net, tmp_path, "train.max_iter=10", "train.checkpointer.period=5", "train.log_period=1",
           "dataloader.evaluator=null", resume=True)
    assert _iterations(tmp_path, "total_loss") == (list(range(10)), list(range(10)))


def test_a_new_run_in_the_folder_of_a_run_that_left_no_checkpoint_shows_its_own_records(train_net, toy_dataset,
                                                                                         tmp_path):
    # its metrics.json went on from the killed run's: iterations 0, 1, 2, 0, 1, 2, ...
    run = ["train.max_iter=3", "train.checkpointer.period=100", "train.log_period=1", "dataloader.evaluator=null"]
    _train(train_net, tmp_path, *run)
    for path in tmp_path.glob("model_*.pth"):  # as a run killed before its first checkpoint leaves the folder
        path.unlink()
    (tmp_path / "last_checkpoint").unlink()
    _train(train_net, tmp_path, *run)
    assert _iterations(tmp_path, "total_loss") == ([0, 1, 2], [0, 1, 2])


@pytest.mark.parametrize("case", ["extended", "evaluating at its start", "after a killed attempt"])
def test_a_finished_run_continued_for_longer_keeps_its_final_evaluation(train_net, toy_dataset, tmp_path, case):
    # detectron2 records the final evaluation at max_iter, the iteration a longer run resumed from model_final starts
    # at: it was dropped as "logged again" (metrics.json and TensorBoard), and the finished run's AP was gone. Unless
    # the longer run evaluates at that iteration itself (an AP after 5 steps beside the one after 4, both at 4), and
    # without the records of an earlier attempt at the continuation that went on from there
    _train(train_net, tmp_path, "train.max_iter=4", "train.eval_period=0")
    if case == "after a killed attempt":  # killed before its first checkpoint, after logging iteration 4
        with open(tmp_path / "metrics.json", "a") as f:
            f.write(json.dumps({"iteration": 4, "total_loss": 99.0}) + "\n")
    period = 5 if case == "evaluating at its start" else 0
    _train(train_net, tmp_path, "train.max_iter=6", f"train.eval_period={period}", resume=True)
    evaluated, evaluated_in_tensorboard = _iterations(tmp_path, "bbox/AP")
    assert evaluated == [4, 6] and _iterations(tmp_path, "total_loss")[0] == list(range(6))
    if case != "after a killed attempt":  # whose iteration 4 TensorBoard discards, and the evaluation with it
        assert evaluated_in_tensorboard == [4, 6]


def test_resume_after_a_torn_last_line_logs_every_record_on_its_own_line(train_net, toy_dataset, tmp_path):
    _train(train_net, tmp_path, "train.checkpointer.period=2", "train.max_iter=4")
    with open(tmp_path / "metrics.json", "a") as f:
        f.write(TORN_RECORD)  # the process died while writing its next record
    _train(train_net, tmp_path, "train.checkpointer.period=2", "train.max_iter=6", resume=True)
    lines = (tmp_path / "metrics.json").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # was: the torn record and the first resumed one on one line
    metrics = read_metrics(str(tmp_path / "metrics.json"))
    assert metrics.series("total_loss")[0] == [0, 1, 2, 3, 4, 5] and metrics.warning is None
    assert "Cut the incomplete last line (28 bytes" in (tmp_path / "log.txt").read_text()


def test_only_a_last_line_that_is_not_whole_json_is_cut(tmp_path, caplog):
    path = tmp_path / "metrics.json"
    long_record = _records([0]).replace('"total_loss"', '"note": "' + "x" * 100_000 + '", "total_loss"')
    cases = [  # content, what is left, whether a warning says so
        (long_record + TORN_RECORD * 3000, long_record, True),  # both lines longer than a chunk read from the end
        (TORN_RECORD, "", True),
        (_records([0]) + '{"iteration": 1}', _records([0]) + '{"iteration": 1}\n', False),  # whole: given its newline
        (_records([0, 1]), _records([0, 1]), False),
        ("", "", False),
    ]
    for content, left, warned in cases:
        path.write_text(content)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            cut_incomplete_last_line(str(tmp_path))
        assert path.read_text() == left
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == warned and all("\n" not in w and str(path) in w for w in warnings)
    path.unlink()
    cut_incomplete_last_line(str(tmp_path))  # a first run: nothing to cut, no file made
    assert not path.exists()
