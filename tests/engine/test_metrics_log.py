"""metrics.json across a resume: a last line cut short by a crash or a full disk is cut off before the resumed run
appends, so its records start on a line of their own and the curves read every one of them."""
import json
import logging

from engine_test_utils import TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)

from focus_detr.analysis.training_curves import read_metrics
from focus_detr.engine.metrics_log import cut_incomplete_last_line

TORN_RECORD = '{"data_time": 0.01, "iterati'


def _records(iterations):
    return "".join(json.dumps({"iteration": i, "total_loss": 1.0}) + "\n" for i in iterations)


def test_resume_after_a_torn_last_line_logs_every_record_on_its_own_line(train_net, toy_dataset, tmp_path):
    def train(max_iter, resume=False):
        argv = ["--config-file", TOY_CONFIG] + (["--resume"] if resume else []) + [
            f"train.output_dir={tmp_path}", "train.checkpointer.period=2", f"train.max_iter={max_iter}"]
        train_net.main(train_net.default_argument_parser().parse_args(argv))

    train(4)
    with open(tmp_path / "metrics.json", "a") as f:
        f.write(TORN_RECORD)  # the process died while writing its next record
    train(6, resume=True)
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
