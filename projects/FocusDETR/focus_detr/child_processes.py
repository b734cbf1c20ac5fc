"""Commands that a tool starts as children (the trainings of ``tools/ablate.py``, ``tools/soak.py``,
``tools/fault_drill.py``) stop when the tool dies.

Those children run in a session of their own, so that a terminal's Ctrl-C reaches them once, forwarded by the tool;
but then nothing stops them when the tool is killed (``kill -9``, the out-of-memory killer), and a training would go
on alone for its whole schedule, holding its output folder. A child started with :func:`child_environment` asks the
kernel (Linux) for SIGTERM when its parent dies, which a training answers by saving a checkpoint and stopping.
"""
import os
import signal
import sys

__all__ = ["STOP_WITH_PARENT", "child_environment", "stop_with_parent"]

# The variable naming the parent's pid; read (and removed, so grandchildren do not see it) by stop_with_parent.
STOP_WITH_PARENT = "FOCUS_DETR_STOP_WITH_PARENT"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def child_environment(environment=None):
    """``environment`` (default: this process's) for a child command that must stop when this process dies."""
    return {**(os.environ if environment is None else environment), STOP_WITH_PARENT: str(os.getpid())}


def stop_with_parent():
    """In a command started with :func:`child_environment`: SIGTERM to this process when the parent dies. Called by
    ``focus_detr.entry_point``, first thing. Does nothing elsewhere, or on systems without ``prctl``."""
    parent = os.environ.pop(STOP_WITH_PARENT, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent.isdigit() and os.getppid() != int(parent):  # it died before the request, which then never fires
        os.kill(os.getpid(), signal.SIGTERM)
