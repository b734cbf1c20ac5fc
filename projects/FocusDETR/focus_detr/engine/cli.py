"""Command-line conventions shared by ``train_net.py``, ``tools/`` and ``demo/``: a user error (config, files,
datasets, disk, memory) becomes one line ``error: <what> <where>: <why>`` on stderr and exit status 2; a bug keeps its
traceback; Ctrl-C is one line (an interrupted training run's says where it stopped and how to resume) and exit
status 130."""
import contextlib
import errno
import logging
import os
import re
import sys

import torch
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import TreesCacheError
from .interrupt import stop_signals_interrupt

__all__ = [
    "DATA_WORKER_DIED",
    "INTERRUPTED_EXIT_STATUS",
    "MAX_LINE_CHARS",
    "MAX_MESSAGE_CHARS",
    "USER_ERRORS",
    "is_out_of_memory",
    "is_user_error",
    "one_line",
    "print_skipped",
    "raised_as",
    "raised_in_this_package",
    "report_interruption",
    "run_reporting_errors",
    "setup_with_plain_log",
    "user_errors_without_tracebacks",
    "warn_on_stderr",
]

# Errors about the user's input or machine (config, files, datasets, permissions, full disks). Anything else is a bug.
USER_ERRORS = (ValueError, OSError, TreesCacheError)

# torch's error for a data-loading worker process that died (the out-of-memory killer, a crash): the machine's
# problem, not a bug of ours; torch raises it where a batch is late or, from its SIGCHLD handler, anywhere
DATA_WORKER_DIED = re.compile(r"DataLoader worker \(pid\(?s?\)? [^)]*\) (exited unexpectedly|is killed by signal)")

# A write that found no room: the disk, the user's quota, the largest file allowed
_FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

# Terminal colours and styles (pygments', termcolor's): detectron2's set-up logs the config file coloured
TERMINAL_STYLE = re.compile(r"\x1b\[[0-9;]*m")

# The CPU allocator's error when memory runs out (torch.OutOfMemoryError is the GPU's)
_CPU_OUT_OF_MEMORY = re.compile(r"DefaultCPUAllocator: can't allocate memory")


# Errors re-raised from data-loader workers or spawned processes carry the original traceback in their message.
_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?:: (.*))?$")
# Longer messages are cut: a line is for reading (the full text stays in the log). The limit leaves room for the
# resume command that a stopped training run's line ends with, after an original message cut to
# MAX_MESSAGE_CHARS.
MAX_LINE_CHARS = 2000
MAX_MESSAGE_CHARS = 800


def _resolve_type(qualified_name):
    """The exception class a traceback names (``ValueError``, ``focus_detr.engine.config.ConfigError``), looked up
    among the modules already imported; None when unknown."""
    module, _, name = qualified_name.rpartition(".")
    found = getattr(sys.modules.get(module or "builtins"), name, None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _origin(error):
    """(exception class or None, message) of the exception where ``error`` started: for an error that carries a
    remote traceback, the exception at its end; else ``error`` itself."""
    message = str(error)
    if _TRACEBACK not in message:
        return type(error), message
    lines = message.rsplit(_TRACEBACK, 1)[1].splitlines()
    for index, line in enumerate(lines):
        if line and not line[0].isspace():  # traceback frames are indented; the exception line is not
            match = _EXCEPTION_LINE.match(line)
            if not match:
                return None, "\n".join(lines[index:])
            return _resolve_type(match.group(1)), "\n".join([match.group(2) or ""] + lines[index + 1:])
    return None, message


def raised_as(error, error_type) -> bool:
    """Whether ``error`` (or, for one re-raised from another process, its original) is an ``error_type``."""
    origin_type, _ = _origin(error)
    return origin_type is not None and issubclass(origin_type, error_type)


def is_out_of_memory(error):
    """Whether ``error`` (or its original) is torch's report that the device (GPU or CPU) ran out of memory."""
    origin_type, message = _origin(error)
    return origin_type is not None and (
        issubclass(origin_type, torch.OutOfMemoryError)
        or (issubclass(origin_type, RuntimeError) and _CPU_OUT_OF_MEMORY.search(message) is not None)
    )


def is_user_error(error):
    """Whether ``error`` (or, for one re-raised from another process, its original) is a user error: one of
    :data:`USER_ERRORS`, or the machine's limits (out of memory, a data-loading worker that died)."""
    origin_type, message = _origin(error)
    if origin_type is None:
        return False
    if issubclass(origin_type, RuntimeError) and DATA_WORKER_DIED.search(message) or is_out_of_memory(error):
        return True
    return issubclass(origin_type, USER_ERRORS)


def one_line(error, limit=MAX_LINE_CHARS):
    """The whole message of ``error`` (of its original, for one re-raised from another process) on one line, cut to
    about ``limit`` characters in the middle: its end usually says why (a long path's "File name too long")."""
    origin_type, message = _origin(error)
    if isinstance(error, OSError) and error.strerror and error.filename and _TRACEBACK not in str(error):
        verb = "write" if error.errno in _FULL_DISK_ERRNOS else "access"
        message = f"cannot {verb} {error.filename}: {error.strerror}"
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    if not text:
        text = origin_type.__name__ if origin_type is not None else type(error).__name__
    if len(text) > limit:
        kept = limit - 40
        head, tail = kept * 2 // 3, kept - kept * 2 // 3
        text = f"{text[:head]} ... ({len(text) - kept} characters left out) ... {text[-tail:]}"
    return text


def warn_on_stderr(message, logger):
    """``message`` as a warning in ``logger``'s log and, on the main process, as ``warning: <message>`` on stderr:
    the log scrolls by, and this says what the numbers that follow are of."""
    logger.warning(message)
    if comm.is_main_process():
        print(f"warning: {message}", file=sys.stderr)


def print_skipped(path, why):
    """The line on stderr of a tool that goes on without an input it cannot use: ``skipped <path>: <why>``."""
    print(f"skipped {path}: {why}", file=sys.stderr)


class _UserErrorTracebackFilter(logging.Filter):
    """Logs a user error that a library reports with ``logger.exception`` as one line, without the traceback."""

    def filter(self, record):
        if record.exc_info and record.exc_info[1] is not None and is_user_error(record.exc_info[1]):
            record.msg = f"{record.getMessage()} {one_line(record.exc_info[1])}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


@contextlib.contextmanager
def user_errors_without_tracebacks(logger_name="detectron2.engine.train_loop"):
    """Within the block, ``logger_name`` (detectron2's training loop logs every exception with its traceback)
    logs user errors as one line."""
    log = logging.getLogger(logger_name)
    quiet = _UserErrorTracebackFilter()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


# The exit status of a process stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT_STATUS = 130


def report_interruption(interrupt):
    """Prints the one line for a KeyboardInterrupt (its message, e.g. a ``TrainingInterrupted``'s, else
    "interrupted") to stderr; returns the exit status (its ``exit_status``, else 130)."""
    print(stop_line(interrupt), file=sys.stderr, flush=True)
    return getattr(interrupt, "exit_status", INTERRUPTED_EXIT_STATUS)


def stop_line(error):
    """The one line :func:`run_reporting_errors` prints for ``error`` (``error: ...`` for a user error, the message
    of an interruption), or None for a bug, which keeps its traceback."""
    if isinstance(error, KeyboardInterrupt):
        return str(error) or "interrupted"
    if isinstance(error, Exception) and is_user_error(error):
        return f"error: {one_line(error)}"
    return None


class _WithoutTerminalStyle(logging.Formatter):
    """A log file handler's formatter, with terminal colour codes removed from what it formats."""

    def __init__(self, formatter):
        super().__init__()
        self.formatter = formatter

    def format(self, record):
        return TERMINAL_STYLE.sub("", self.formatter.format(record))


def setup_with_plain_log(cfg, args):
    """detectron2's ``default_setup`` (loggers, log.txt, config.yaml), with log.txt in plain text. It logs the config
    file coloured for a terminal when pygments is installed (pytest brings it), and the colour codes went into
    log.txt too, unreadable in an editor, ``less`` or ``grep``."""
    rank = comm.get_rank()
    # default_setup's own two calls, made first with the same arguments: setup_logger caches its loggers by them
    for logger in (setup_logger(cfg.train.output_dir, distributed_rank=rank, name="fvcore"),
                   setup_logger(cfg.train.output_dir, distributed_rank=rank)):
        for handler in _log_file_handlers(logger, cfg.train.output_dir):
            if not isinstance(handler.formatter, _WithoutTerminalStyle):
                handler.setFormatter(_WithoutTerminalStyle(handler.formatter or logging.Formatter()))
    default_setup(cfg, args)


def _log_file_handlers(logger, output_dir):
    """``logger``'s handlers writing ``output_dir``'s log.txt on the main process, log.txt.rankN on the others."""
    if not output_dir:  # detectron2 writes no log file then
        return
    log_file = os.path.abspath(os.path.join(output_dir, "log.txt"))
    for handler in logger.handlers:
        name = getattr(getattr(handler, "stream", None), "name", None)
        if isinstance(name, str) and os.path.abspath(name).startswith(log_file):
            yield handler


@contextlib.contextmanager
def stop_recorded_in_log(output_dir, logger_name="focus_detr"):
    """Within the block (a run, after detectron2's set-up opened ``output_dir``'s log.txt), what stops the run is
    also written at the end of the log file: the one line of a user error or an interruption, and a bug's traceback,
    whose last line says what was saved and how to resume (a training run's). The terminal's last lines were
    missing from the run's record (a batch job's log.txt ended mid-way). Written through the logger's file handlers
    only; the caller prints them on the terminal."""
    try:
        yield
    except BaseException as error:
        line = stop_line(error)
        if output_dir and (line is not None or isinstance(error, Exception)):
            # the log's own level stands for the terminal's "error: "; an interruption is no error
            level = logging.WARNING if isinstance(error, KeyboardInterrupt) else logging.ERROR
            message, exc_info = (line.removeprefix("error: "), None) if line is not None else (
                "the run stopped on this error:",
                (type(error), error, error.__traceback__))
            record = logging.LogRecord(logger_name, level, __file__, 0, message, None, exc_info)
            for handler in _log_file_handlers(logging.getLogger(logger_name), output_dir):
                handler.handle(record)
        raise


def run_reporting_errors(function, *args, **kwargs):
    """Calls ``function``; returns its exit status (its result when an int, else 0), or prints
    ``error: <one line>`` to stderr and returns 2 for user errors, or prints one line and returns 130 (or the
    interruption's own status) for Ctrl-C, and likewise 143 / 129 for SIGTERM / SIGHUP, which would otherwise end the
    process silently, skipping its clean-up (a data build's temporary folder stayed). Other exceptions (bugs)
    propagate with their traceback."""
    try:
        with stop_signals_interrupt(), user_errors_without_tracebacks():
            result = function(*args, **kwargs)
    except KeyboardInterrupt as interrupt:
        return report_interruption(interrupt)
    except Exception as error:
        line = stop_line(error)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def raised_in_this_package(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is in focus_detr's own code (whose messages name what
    they check), not in detectron2's or torch's."""
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return traceback is not None and os.path.abspath(traceback.tb_frame.f_code.co_filename).startswith(package + os.sep)
