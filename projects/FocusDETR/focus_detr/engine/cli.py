"""Command-line conventions shared by ``train_net.py`` and ``tools/``: input errors become one line on stderr."""
import sys

from torch.multiprocessing.spawn import ProcessRaisedException

from ..data import TreesCacheError

__all__ = ["USER_ERRORS", "one_line", "run_reporting_errors"]

# Errors about the user's input (config, files, datasets). Anything else keeps its traceback: it is a bug.
USER_ERRORS = (ValueError, FileNotFoundError, TreesCacheError, ProcessRaisedException)


def one_line(error):
    """The message of ``error`` on one line. Errors re-raised from data-loader workers or spawned processes carry
    the original traceback in their message; their last line is the original exception."""
    message = str(error).strip()
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if len(lines) > 1 else lines[0]


def run_reporting_errors(function, *args, **kwargs):
    """Calls ``function``; returns 0, or prints ``error: <one line>`` to stderr and returns 2 for input errors."""
    try:
        function(*args, **kwargs)
    except USER_ERRORS as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    return 0
