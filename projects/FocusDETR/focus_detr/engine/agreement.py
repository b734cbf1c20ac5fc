"""How the processes of a multi-process run stop together when one of them fails where all must carry on in step.

A process that raised alone would leave the others waiting in their next collective for good (a training step's
all-reduce, an evaluator's gather). So at a point every process reaches, each reports whether it failed
(:func:`failure_report`, gathered with ``comm.all_gather``), and :func:`raise_agreed_failure` makes all of them
raise together: when every failure is a user error (an unreadable image, out of memory), the first failing
process's :class:`ProcessFailed` subclass with the same message on every process, so that they can also save
together; when one is a bug, the failing process raises its own error and the others a RuntimeError naming it.
"""
from typing import List, Optional, Tuple, Type

from .cli import is_user_error, one_line

__all__ = ["ProcessFailed", "failure_report", "raise_agreed_failure"]


class ProcessFailed(ValueError):
    """One process of a multi-process run failed with a user error; every process raises it with the same message.
    ``remedy`` is that of the failing process's error (None: the default)."""

    def __init__(self, message, remedy=None):
        super().__init__(message)
        self.remedy = remedy


Report = Optional[Tuple[str, bool, Optional[str], Type[ProcessFailed]]]


def failure_report(failure: Optional[BaseException], agreed_type: Type[ProcessFailed]) -> Report:
    """What this process tells the others: None when it did not fail, else ``(one line, user error?, the error's
    remedy attribute or None, agreed_type)``, ``agreed_type`` being what every process raises for it. A bug's line
    starts with its type."""
    if failure is None:
        return None
    user_error = is_user_error(failure)
    text = one_line(failure) if user_error else f"{type(failure).__name__}: {one_line(failure)}"
    return text, user_error, getattr(failure, "remedy", None), agreed_type


def raise_agreed_failure(failure: Optional[BaseException], reports: List[Report], what: str) -> None:
    """Returns when no process failed. ``failure``: this process's error (None: it did not fail); ``reports``: every
    process's :func:`failure_report`, in rank order; ``what`` completes "process 1 of 2 failed ..." for a bug."""
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if not failed:
        return
    rank, (text, _, remedy, agreed_type) = failed[0]
    if all(report[1] for _, report in failed):
        raise agreed_type(f"{text} (process {rank} of {len(reports)})", remedy) from failure
    if failure is not None:
        raise failure
    raise RuntimeError(f"process {rank} of {len(reports)} failed {what}: {text}")
