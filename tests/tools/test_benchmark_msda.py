"""tools/benchmark_msda.py: the backends of a case timed in turn, round by round, and settings that cannot be timed
refused before anything runs."""
import json

import pytest

from tools_test_utils import load_script

KEEP_FRACTION = "--keep-fraction is the share of tokens the Focus-DETR case keeps, in (0, 1], got"


@pytest.fixture(scope="module")
def benchmark_msda():
    return load_script("tools/benchmark_msda.py", "benchmark_msda")


def test_every_backend_gets_a_row_with_its_speed_up_against_the_reference(benchmark_msda, tmp_path, capsys):
    report = tmp_path / "msda.json"
    rows = benchmark_msda.main(["--threads", "1", "--cases", "decoder", "--decoder-queries", "20", "--batch", "1",
                                "--heads", "2", "--repeats", "3", "--backends", "pytorch", "cpu",
                                "--json", str(report)])
    assert [row["backend"] for row in rows] == ["pytorch", "cpu"]
    reference = rows[0]
    # the reference against itself, round by round: exactly 1
    assert reference["forward_speedup"] == reference["forward_backward_speedup"] == 1.0
    assert all(row["queries"] == 20 and row["forward_ms"] > 0 and row["forward_backward_ms"] > 0 for row in rows)
    assert json.loads(report.read_text()) == rows
    assert "1.00x" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--keep-fraction", "5"], f"{KEEP_FRACTION} 5.0"),
    (["--keep-fraction", "-1"], f"{KEEP_FRACTION} -1.0"),
    (["--batch", "1", "0"], "--batch must be at least 1, got 0"),
    (["--heads", "0"], "--heads must be at least 1, got 0"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--repeats", "0"], "--repeats must be at least 1, got 0"),
    (["--backends", "pytorch", "triton"], "--backends: unknown triton; the backends are pytorch, cpu, cuda"),
])
def test_settings_that_cannot_be_timed_are_one_line_before_any_run(benchmark_msda, argv, message, capsys):
    from focus_detr.engine.cli import run_reporting_errors

    assert run_reporting_errors(benchmark_msda.main, argv) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: {message}" and not captured.out  # (the table's header not printed)


def test_a_folder_as_json_is_refused_before_the_timing(benchmark_msda, tmp_path, capsys):
    from focus_detr.engine.cli import run_reporting_errors

    assert run_reporting_errors(benchmark_msda.main, ["--json", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --json {tmp_path} is a folder: give a file name, e.g. " \
                                              f"{tmp_path}/msda.json"
