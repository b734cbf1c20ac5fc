"""tools/main_job.py's counts are checked when the command line is read, before any training: a negative image count
used to draw all but the last images, a negative thread count to use every core."""
import pytest
from tools_test_utils import load_script

main_job = load_script("tools/main_job.py", "main_job_arguments")


@pytest.mark.parametrize("arguments, message", [
    (["--demo-images", "-1"], "argument --demo-images: must be at least 1, got -1"),
    (["--demo-images", "0"], "argument --demo-images: must be at least 1, got 0"),
    (["--threads", "-3"], "argument --threads: must be at least 0, got -3"),
    (["--threads", "two"], "argument --threads: expected a whole number, got 'two'"),
])
def test_bad_counts_are_refused_in_one_line_before_anything_runs(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main_job.parse_args(arguments)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert exit.value.code == 2 and len(errors) == 1 and errors[0].endswith(f"error: {message}")


def test_counts_in_range_are_taken():
    args = main_job.parse_args(["--demo-images", "1", "--threads", "0", "train.max_iter=2"])
    assert (args.demo_images, args.threads, args.opts) == (1, 0, ["train.max_iter=2"])


def test_all_threads_means_the_cores_this_process_may_use(monkeypatch):
    # taskset -c 0 on a 2-core machine: one thread, not os.cpu_count()'s two
    monkeypatch.setattr(main_job.os, "sched_getaffinity", lambda pid: {0})
    assert (main_job.cpu_threads(0), main_job.cpu_threads(3)) == (1, 3)
