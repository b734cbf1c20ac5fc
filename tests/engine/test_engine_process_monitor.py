"""focus_detr.engine.process_monitor and training_process: reading a process tree's memory, file handles and
threads from /proc, and killing a watched run with every process of its group."""
import contextlib
import os
import signal
import subprocess
import sys

import pytest

from focus_detr.engine.process_monitor import descendants, live_group_members, read_usage, sample_tree
from focus_detr.engine.training_process import TrainingProcess

# A parent holding `files` extra open files and `threads` extra threads, with one forked child ("worker");
# prints "ready" when all are in place, then sleeps.
_TREE = """
import os, sys, threading, time
files = [open(os.devnull) for _ in range(int(sys.argv[1]))]
for _ in range(int(sys.argv[2])):
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
if os.fork() == 0:
    time.sleep(60)
    os._exit(0)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def start_tree():
    started = []

    def start(files, threads):
        process = subprocess.Popen([sys.executable, "-c", _TREE, str(files), str(threads)], stdout=subprocess.PIPE,
                                   start_new_session=True)
        started.append(process)
        assert process.stdout.readline() == b"ready\n"
        return process

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):  # killed by the test
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_tree_sample_counts_the_workers_handles_and_threads(start_tree):
    plain, busy = start_tree(0, 0), start_tree(5, 3)
    (child,) = descendants(busy.pid)
    assert read_usage(child).threads == 1  # a forked process keeps only the forking thread
    a, b = sample_tree(plain.pid), sample_tree(busy.pid)
    assert a.workers == b.workers == 1 and a.rss_mib > 1 and a.workers_rss_mib > 1
    assert b.fds - a.fds == 10  # five files, inherited by the worker
    assert b.threads - a.threads == 3


def test_gone_processes_read_as_none(start_tree):
    process = start_tree(0, 0)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert read_usage(process.pid) is None and sample_tree(process.pid) is None


def _watched(tmp_path, script, timeout_s=60.0):
    return TrainingProcess([sys.executable, "-c", script], None, str(tmp_path / "log"), str(tmp_path / "out"),
                           timeout_s, poll_s=0.01)


# a "training run" with one worker that logs an iteration, then hangs
_LOGGING_RUN = """
import os, time
if os.fork() == 0:
    time.sleep(60)
    os._exit(0)
print("[12/04 20:21:11 d2.utils.events]:  eta: 0:00:08  iter: 3  total_loss: 23.52", flush=True)
time.sleep(60)
"""


def test_a_kill_returns_once_the_whole_group_is_gone(tmp_path):
    run = _watched(tmp_path, _LOGGING_RUN)
    try:
        killed = run.wait(trigger=lambda r: r.iterations.get(3))
    finally:
        run.close()
    assert killed and run.last_iteration() == 3
    assert live_group_members(run.pid) == []


def test_a_run_past_its_time_limit_is_killed_with_one_line(tmp_path):
    run = _watched(tmp_path, _LOGGING_RUN, timeout_s=0.5)
    try:
        with pytest.raises(TimeoutError, match=r"^a training process ran past its time limit \(0\.5 s\)$"):
            run.wait()
    finally:
        run.close()
    assert live_group_members(run.pid) == []


def test_a_watcher_stopped_by_ctrl_c_leaves_no_run_behind(tmp_path):
    run = _watched(tmp_path, _LOGGING_RUN)

    def interrupt(run):
        if run.iterations:
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            run.wait(trigger=interrupt)
    finally:
        run.close()
    assert run.process.returncode == -9 and live_group_members(run.pid) == []
