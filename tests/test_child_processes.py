"""A command that a tool starts in a session of its own (ablate's, the soak's and the fault drill's trainings) stops
when that tool is killed, instead of training on alone."""
import os
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    import focus_detr.entry_point
    from focus_detr.child_processes import STOP_WITH_PARENT

    def stop(signum, frame):
        with open(sys.argv[1], "w") as f:
            f.write(f"{signal.Signals(signum).name}, variable passed on: {STOP_WITH_PARENT in os.environ}")
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    time.sleep(60)
""")

TOOL = textwrap.dedent("""
    import subprocess, sys, time
    from focus_detr.child_processes import child_environment

    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], env=child_environment(),
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert child.stdout.readline() == "ready\\n"
    print(child.pid, flush=True)
    time.sleep(60)
""")


def test_a_child_command_gets_sigterm_when_the_tool_that_started_it_is_killed(tmp_path):
    marker = tmp_path / "child_stopped.txt"
    tool = subprocess.Popen([sys.executable, "-c", TOOL, CHILD, str(marker)], stdout=subprocess.PIPE, text=True)
    child_pid = int(tool.stdout.readline())
    try:
        tool.kill()  # kill -9: the tool forwards nothing
        tool.wait()
        deadline = time.monotonic() + 20
        # written, not only created: the child opens the file before it writes its line
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == "SIGTERM, variable passed on: False"
    finally:
        try:
            os.kill(child_pid, 9)
        except ProcessLookupError:
            pass
