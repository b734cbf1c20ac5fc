"""What a running process tree holds, read from Linux's ``/proc``: resident memory (``VmRSS``), open file handles
(entries of ``/proc/<pid>/fd``) and threads, for a training process and its descendants (data-loader workers).
Processes that exit while being read are skipped: a tree is a moving target."""
import os
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional

__all__ = ["ProcessUsage", "TreeUsage", "check_proc_available", "descendants", "live_group_members", "read_usage",
           "sample_tree"]

PROC = "/proc"
_MIB_PER_KIB = 1 / 1024


class _Status(NamedTuple):
    state: str  # R, S, D, Z (zombie), ...
    ppid: int
    pgrp: int


@dataclass
class ProcessUsage:
    rss_kib: int
    fds: int
    threads: int


@dataclass
class TreeUsage:
    """One look at a process and its descendants ("workers")."""

    rss_mib: float  # the process itself
    workers: int
    workers_rss_mib: float  # summed (pages shared with the parent since fork count in both)
    fds: int  # the process and its workers together
    threads: int  # the process and its workers together


def check_proc_available():
    if not os.path.isfile(os.path.join(PROC, "self", "status")):
        raise OSError(f"{PROC}/self/status is not readable: measuring processes needs Linux's /proc")


def _read_status(pid) -> Optional[_Status]:
    try:
        with open(os.path.join(PROC, str(pid), "stat")) as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after its last ")"
    fields = text[text.rindex(")") + 2:].split()
    return _Status(fields[0], int(fields[1]), int(fields[2]))


def _process_table() -> Dict[int, _Status]:
    table = {}
    for name in os.listdir(PROC):
        if name.isdigit():
            status = _read_status(int(name))
            if status is not None:
                table[int(name)] = status
    return table


def descendants(pid, table=None) -> List[int]:
    """The processes started by ``pid``, by their children and so on (breadth first)."""
    table = _process_table() if table is None else table
    children = {}
    for child, status in table.items():
        children.setdefault(status.ppid, []).append(child)
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in sorted(children.get(parent, []))]
        found += frontier
    return found


def live_group_members(pgid) -> List[int]:
    """The processes of process group ``pgid`` that have not exited (zombies waiting to be reaped hold nothing)."""
    return [pid for pid, status in _process_table().items() if status.pgrp == pgid and status.state not in "ZX"]


def read_usage(pid) -> Optional[ProcessUsage]:
    """Resident memory, open file handles and threads of ``pid``; None when it is gone or a zombie."""
    try:
        with open(os.path.join(PROC, str(pid), "status")) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        fds = len(os.listdir(os.path.join(PROC, str(pid), "fd")))
    except (FileNotFoundError, ProcessLookupError):
        return None
    if "VmRSS" not in fields:  # a zombie has no memory
        return None
    return ProcessUsage(int(fields["VmRSS"].split()[0]), fds, int(fields["Threads"]))


def sample_tree(pid) -> Optional[TreeUsage]:
    """``pid``'s usage with its descendants'; None when ``pid`` itself is gone."""
    main = read_usage(pid)
    if main is None:
        return None
    workers = [usage for usage in map(read_usage, descendants(pid)) if usage is not None]
    return TreeUsage(
        rss_mib=main.rss_kib * _MIB_PER_KIB,
        workers=len(workers),
        workers_rss_mib=sum(usage.rss_kib for usage in workers) * _MIB_PER_KIB,
        fds=main.fds + sum(usage.fds for usage in workers),
        threads=main.threads + sum(usage.threads for usage in workers),
    )
