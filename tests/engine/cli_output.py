"""Reading what a command printed: its ``error:`` lines and the tracebacks it showed."""
import re

# Printed by the logging module when a handler writes to a stream that an earlier test's output capture closed
# (detectron2's setup_logger caches its handlers): an artefact of running commands in-process, not the command's.
_LOGGING_ERROR = re.compile(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", re.DOTALL)


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


def shows_traceback(text):
    return "Traceback (most recent call last)" in _LOGGING_ERROR.sub("", text)
