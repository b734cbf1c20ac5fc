"""What a command of this project sets up before its slow imports: ``train_net.py``, ``demo/demo.py``, ``tools/``
and the Python scripts of ``scripts/`` import this module first, before torch and detectron2.

- fvcore and detectron2 call ``torch.jit.script`` while they are imported, and recent torch answers each call with a
  FutureWarning that the user can do nothing about: a command does not print it. Nor torch's "No CUDA runtime is
  found" on a CPU machine with a CUDA toolkit (detectron2's environment report imports the extension builder, which
  says it; the commands build nothing).
- A Ctrl-C that nothing handles, e.g. during the seconds of those imports, ends the command with one line
  ("interrupted", or the interruption's own message) and exit status 130 (Python's, for an unhandled
  KeyboardInterrupt), not a traceback. Any other uncaught exception keeps its traceback.
- A command a tool started as its child (:mod:`focus_detr.child_processes`) stops when that tool dies.
- Standard output whose reader is gone (``train_net.py ... | head``, a closed terminal) takes what is written without
  a word from then on: every logging call printed a BrokenPipeError traceback to stderr, and the next ``print``
  (pycocotools' during an evaluation) ended the work. The run's log.txt still has everything.

Only commands import this module: ``import focus_detr`` in a user's own program leaves the process's warning filters
and ``sys.excepthook`` alone."""
import logging
import os
import sys
import warnings

from .child_processes import stop_with_parent

stop_with_parent()
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
logging.getLogger("torch.utils.cpp_extension").addFilter(
    lambda record: not record.getMessage().startswith("No CUDA runtime is found"))


def _interrupt_in_one_line(exc_type, exc, traceback, previous_hook=sys.excepthook):
    if issubclass(exc_type, KeyboardInterrupt):
        print(str(exc) or "interrupted", file=sys.stderr, flush=True)
        return
    previous_hook(exc_type, exc, traceback)


sys.excepthook = _interrupt_in_one_line


class _OutputWithoutReader:
    """``stream`` (standard output), until a write or flush finds its reader gone: then the descriptor is pointed at
    the null device (as Python's documentation on SIGPIPE advises: also what the interpreter flushes at exit goes
    there) and the call returns as if written."""

    def __init__(self, stream):
        self._stream = stream

    def _reader_gone(self):
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self._stream.fileno())
        finally:
            os.close(null)

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def __getattr__(self, name):
        return getattr(self._stream, name)


if sys.stdout is not None and hasattr(sys.stdout, "fileno"):
    sys.stdout = _OutputWithoutReader(sys.stdout)
