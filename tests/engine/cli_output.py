"""Reading what a command printed: its ``error:`` lines, the tracebacks it showed and the warnings it logged."""
import contextlib
import logging
import re

# Printed by the logging module when a handler writes to a stream that an earlier test's output capture closed
# (detectron2's setup_logger caches its handlers): an artefact of running commands in-process, not the command's.
_LOGGING_ERROR = re.compile(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", re.DOTALL)


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


def shows_traceback(text):
    return "Traceback (most recent call last)" in _LOGGING_ERROR.sub("", text)


@contextlib.contextmanager
def logged_warnings(logger_name):
    """The messages (a list, filled as they come) that ``logger_name`` logs at WARNING or above within the block:
    collected on that logger itself, since detectron2's setup_logger may stop propagation to the root (caplog)."""
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
