"""What a command of this project sets up before its slow imports: ``train_net.py``, ``demo/demo.py``, ``tools/``
and the Python scripts of ``scripts/`` import this module first, before torch and detectron2.

- fvcore and detectron2 call ``torch.jit.script`` while they are imported, and recent torch answers each call with a
  FutureWarning that the user can do nothing about: a command does not print it.
- A Ctrl-C that nothing handles, e.g. during the seconds of those imports, ends the command with one line
  ("interrupted", or the interruption's own message) and exit status 130 (Python's, for an unhandled
  KeyboardInterrupt), not a traceback. Any other uncaught exception keeps its traceback.
- A command a tool started as its child (:mod:`focus_detr.child_processes`) stops when that tool dies.

Only commands import this module: ``import focus_detr`` in a user's own program leaves the process's warning filters
and ``sys.excepthook`` alone."""
import sys
import warnings

from .child_processes import stop_with_parent

stop_with_parent()
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


def _interrupt_in_one_line(exc_type, exc, traceback, previous_hook=sys.excepthook):
    if issubclass(exc_type, KeyboardInterrupt):
        print(str(exc) or "interrupted", file=sys.stderr, flush=True)
        return
    previous_hook(exc_type, exc, traceback)


sys.excepthook = _interrupt_in_one_line
