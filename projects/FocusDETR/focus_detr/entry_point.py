"""What a command of this project sets up before its slow imports: ``train_net.py``, ``demo/demo.py``, ``tools/``
and the Python scripts of ``scripts/`` import this module first, before torch and detectron2.

- fvcore and detectron2 call ``torch.jit.script`` while they are imported, and recent torch answers each call with a
  FutureWarning that the user can do nothing about: a command does not print it. Nor torch's "No CUDA runtime is
  found" on a CPU machine with a CUDA toolkit (detectron2's environment report imports the extension builder, which
  says it; the commands build nothing).
- A Ctrl-C that nothing handles, e.g. during the seconds of those imports, ends the command with one line
  ("interrupted", or the interruption's own message) and exit status 130 (Python's, for an unhandled
  KeyboardInterrupt), not a traceback. Any other uncaught exception keeps its traceback. Within the command's own
  imports the process ends at once, as for SIGTERM below: a KeyboardInterrupt raised in a C extension's
  initialisation can be swallowed there.
- A SIGTERM or SIGHUP before the command installs its own handlers (a scheduler's stop, a closed terminal, during
  those imports) ends it with one line ("interrupted by SIGTERM") and exit status 143 / 129, at once, as the default
  action would have ended it without a word: raised as an exception instead, it could be swallowed by the C code
  being imported (torch's import of numpy clears the errors it meets) and end in an unrelated traceback. A signal
  ignored at start stays ignored (SIGHUP under ``nohup``). A process that ``multiprocessing`` starts (a training
  process of ``--num-gpus N``, which imports the command again) keeps the default: its launching process says why it
  ended. Once the command's own handling has run, the default action is back (no Python handler runs while a
  process hangs in C code, e.g. a driver's teardown at exit).
- A command a tool started as its child (:mod:`focus_detr.child_processes`) stops when that tool dies.
- Standard output whose reader is gone (``train_net.py ... | head``, a closed terminal) takes what is written without
  a word from then on: every logging call printed a BrokenPipeError traceback to stderr, and the next ``print``
  (pycocotools' during an evaluation) ended the work. The run's log.txt still has everything.

Only commands import this module: ``import focus_detr`` in a user's own program leaves the process's warning filters,
``sys.excepthook`` and signal handlers alone."""
import errno
import logging
import os
import signal
import sys
import threading
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


def _say(line):
    try:
        for stream in (sys.stdout, sys.stderr):  # what was printed before, as an exit would flush it
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 (None, gone or closed, interrupted in the middle of a write)
                pass
        os.write(2, f"{line}\n".encode())
    except OSError:  # no stderr to say it on (a closed terminal, a broken pipe, 2>&-): the process ends all the same
        pass


def _end_in_one_line(signal_number, frame):
    try:
        _say(f"interrupted by {signal.Signals(signal_number).name}")
    finally:
        os._exit(128 + signal_number)


# For the imports only: a command's own handling puts the default back after it (focus_detr.engine.interrupt), so
# that a SIGTERM still ends a process stuck in C code (a driver's teardown at exit), where no Python handler runs.
_end_in_one_line.restored_as_default = True


def _in_the_command_s_imports(frame):
    """Whether ``frame`` runs inside an import statement of the command's own module-level code (``__main__``):
    its imports of torch, detectron2 and the package, not an import that a function makes later."""
    inner = None
    while frame is not None:
        if (inner is not None and frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__"
                and inner.f_code.co_filename.startswith("<frozen importlib")):
            return True
        inner, frame = frame, frame.f_back
    return False


def _ctrl_c_in_one_line(signal_number, frame):
    """Python's own SIGINT handling (a KeyboardInterrupt), except within the command's imports: raised there, the
    KeyboardInterrupt can land in a C extension's initialisation, which may swallow it (scipy's, about one Ctrl-C in
    three at that moment) and go on to an unrelated RecursionError traceback. There the process says "interrupted"
    and ends as an unhandled KeyboardInterrupt ends it, by SIGINT (status 130 in a shell)."""
    if not _in_the_command_s_imports(frame):
        raise KeyboardInterrupt
    try:
        _say("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        os._exit(128 + signal_number)  # should the default action not end the process


def _signals_end_in_one_line():
    if threading.current_thread() is not threading.main_thread():  # only the main thread may install handlers
        return
    multiprocessing = sys.modules.get("multiprocessing")
    # a process that multiprocessing starts imports its parent's main module (a command) while "inheriting"
    if multiprocessing is not None and getattr(multiprocessing.current_process(), "_inheriting", False):
        return
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, _end_in_one_line)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not SIG_IGN (a script's background job)
        signal.signal(signal.SIGINT, _ctrl_c_in_one_line)


_signals_end_in_one_line()


class _OutputWithoutReader:
    """``stream`` (standard output), until a write or flush finds its reader gone (a broken pipe; EIO from a closed
    terminal): then the descriptor is pointed at the null device (as Python's documentation on SIGPIPE advises: also
    what the interpreter flushes at exit goes there) and the call returns as if written."""

    def __init__(self, stream):
        self._stream = stream

    def _written_or_dropped(self, call, *args, dropped=None):
        try:
            return call(*args)
        except OSError as error:
            if not isinstance(error, BrokenPipeError) and error.errno != errno.EIO:
                raise
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)
            return dropped

    def write(self, text):
        return self._written_or_dropped(self._stream.write, text, dropped=len(text))

    def writelines(self, lines):
        self._written_or_dropped(self._stream.writelines, lines)

    def flush(self):
        self._written_or_dropped(self._stream.flush)

    def __getattr__(self, name):
        if name == "_stream":  # not set yet (a copy made without __init__): no endless lookup
            raise AttributeError(name)
        return getattr(self._stream, name)


if sys.stdout is not None and hasattr(sys.stdout, "fileno"):
    sys.stdout = _OutputWithoutReader(sys.stdout)
