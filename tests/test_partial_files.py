"""Temporary files and folders renamed into place: what a killed writer leaves is removed by the next run, what a
live writer (another process, or this one) is writing is kept."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from focus_detr.partial_files import PartialPath, remove_abandoned

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="kernel file locks (flock) are POSIX")


def _writer_process(parent, folder):
    """A process that makes a PartialPath in ``parent``, prints its path and waits to be killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from focus_detr.partial_files import PartialPath
        partial = PartialPath({str(parent)!r}, prefix=".out.", suffix=".partial", folder={folder})
        print(partial.path, flush=True)
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


@pytest.mark.parametrize("folder", [False, True])
def test_what_a_killed_writer_left_is_removed_and_what_live_writers_write_is_kept(tmp_path, folder):
    killed, killed_path = _writer_process(tmp_path, folder)
    running, running_path = _writer_process(tmp_path, folder)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        with PartialPath(tmp_path, prefix=".out.", suffix=".partial", folder=folder) as ours:
            (tmp_path / ".out.users.txt").write_text("another name: not ours")
            assert remove_abandoned(tmp_path, ".out.", ".partial", folders=folder) == [killed_path]
            assert os.path.exists(running_path) and os.path.exists(ours.path)
            # a file is never taken for a folder, nor the other way round
            assert remove_abandoned(tmp_path, ".out.", ".partial", folders=not folder) == []
        assert not os.path.exists(ours.path)  # closed without being renamed: removed
    finally:
        running.kill()
        running.wait()
    assert remove_abandoned(tmp_path, ".out.", ".partial", folders=folder) == [running_path]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.users.txt"]


def test_a_result_renamed_into_place_is_kept_with_the_usual_mode(tmp_path):
    umask = os.umask(0o027)
    try:
        with PartialPath(tmp_path, prefix=".result.", suffix=".tmp") as partial:
            with open(partial.path, "w") as f:
                f.write("complete")
            os.replace(partial.path, tmp_path / "result.txt")
        with PartialPath(tmp_path, prefix=".cache.", folder=True) as partial:
            os.rename(partial.path, tmp_path / "cache")
    finally:
        os.umask(umask)
    assert (tmp_path / "result.txt").read_text() == "complete"
    assert (tmp_path / "result.txt").stat().st_mode & 0o777 == 0o640  # mkstemp's would be 0o600
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o750  # mkdtemp's would be 0o700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "result.txt"]
