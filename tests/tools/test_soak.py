"""tools/soak.py: a training run sampled for memory, file handles and threads, with a table and a verdict."""
import json
import tempfile

import pytest

from focus_detr.engine.cli import run_reporting_errors
from focus_detr.engine.soak import Limits, Sample, soak_verdict
from tools_test_utils import load_script


def test_a_short_soak_on_the_tree_config_reports_samples_a_table_and_a_verdict(tmp_path, capsys):
    soak = load_script("tools/soak.py", "soak")
    report = tmp_path / "soak.json"
    # 8 iterations, evaluations after 4 and 8: the judged samples are those of iterations 4-7 and the last evaluation.
    # Handles and threads come and go with data-loader traffic, so this short run cannot judge them: wide limits.
    argv = ["--output", str(tmp_path / "run"), "--sample-every", "0.1", "--json", str(report),
            "--max-rss-growth", "50", "--max-fd-growth", "100", "--max-thread-growth", "100",
            "train.max_iter=8", "train.eval_period=4", "train.checkpointer.period=2", "train.log_period=1",
            "dataloader.train.num_workers=1"]
    assert soak.main(soak.parse_args(argv)) == 0
    result = json.loads(report.read_text())
    assert result["run"]["exit_status"] == 0 and result["run"]["iterations"] == 8
    assert result["max_iter"] == 8 and result["eval_period"] == 4
    samples = [Sample(**s) for s in result["samples"]]
    assert samples[-1].iterations == 8 and any(s.workers == 1 and s.rss_mib > 100 and s.fds > 3 for s in samples)
    verdict = result["verdict"]
    assert verdict["ok"] and verdict["problems"] == [] and verdict["warmup_iterations"] == 4
    assert set(verdict["measures"]) == {"rss_mib", "workers_rss_mib", "fds", "threads"}
    # the verdict is the one its samples give
    again = soak_verdict(samples, 4, 8, Limits(0.5, 100, 100))
    assert verdict["measures"] == again.measures and verdict["window"] == again.window
    out = capsys.readouterr().out
    assert "iter  time s  RSS MiB workers wRSS MiB   fds threads" in out and "<- warm-up over" in out
    assert "soak: PASS; 8 iterations in" in out
    assert (tmp_path / "run" / "run" / "model_final.pth").is_file()  # --output is kept


def _failing_soak(soak, monkeypatch, seen):
    """Replaces the soak's training run by a failure, keeping what it was given."""
    def failing_run(command, output_dir, log_path, sample_every_s, echo=None):
        seen.update(command=command, output_dir=output_dir, log_path=log_path)
        raise OSError("/proc is not readable: stopped by the test")

    monkeypatch.setattr(soak, "run_soak", failing_run)


def test_a_relative_output_means_the_users_working_directory_also_for_the_run(tmp_path, monkeypatch, capsys):
    soak = load_script("tools/soak.py", "soak")
    seen = {}
    _failing_soak(soak, monkeypatch, seen)
    monkeypatch.chdir(tmp_path)
    assert run_reporting_errors(soak.main, soak.parse_args(["--output", "soak_run"])) == 2
    assert capsys.readouterr().err.strip() == "error: /proc is not readable: stopped by the test"
    argv = seen["command"].argv(seen["output_dir"], resume=False)
    assert argv[-1] == f"train.output_dir={tmp_path / 'soak_run' / 'run'}"
    assert seen["log_path"] == str(tmp_path / "soak_run" / "train.log")


def test_a_json_that_is_a_folder_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    soak = load_script("tools/soak.py", "soak")
    seen = {}
    _failing_soak(soak, monkeypatch, seen)
    args = soak.parse_args(["--json", str(tmp_path), "--output", str(tmp_path / "run")])
    assert run_reporting_errors(soak.main, args) == 2
    assert capsys.readouterr().err.strip() == (f"error: --json {tmp_path} is a folder: give a file name, e.g. "
                                               f"{tmp_path / 'report.json'}")
    assert not seen and not (tmp_path / "run").exists()


def test_a_soak_that_fails_removes_its_temporary_folder(tmp_path, monkeypatch, capsys):
    soak = load_script("tools/soak.py", "soak")
    _failing_soak(soak, monkeypatch, {})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where prepare_runs_folder makes it
    assert run_reporting_errors(soak.main, soak.parse_args([])) == 2
    assert "stopped by the test" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_limits_and_times_that_cannot_work_are_refused_by_the_parser(capsys):
    # a limit of nan was never exceeded, --sample-every nan sampled in a busy loop, --threads 0 ran 7x slower
    soak = load_script("tools/soak.py", "soak")
    for argv, message in (
        (["--max-rss-growth", "nan"], "argument --max-rss-growth: must be a finite number, got 'nan'"),
        (["--sample-every", "0"], "argument --sample-every: must be > 0, got '0'"),
        (["--run-timeout", "inf"], "argument --run-timeout: must be a finite number, got 'inf'"),
        (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    ):
        with pytest.raises(SystemExit):
            soak.parse_args(argv)
        assert capsys.readouterr().err.strip().endswith(f"error: {message}")
