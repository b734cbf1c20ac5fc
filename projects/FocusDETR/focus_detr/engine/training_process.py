"""``train_net.py`` runs started and watched from outside (by the fault drill and the soak): each run is a process
in its own session, so its data-loader workers die with it when it is killed, as in a crash. The watcher follows
the run's log (the iterations it reports) and its output folder (the temporary files of checkpoint writes).

The runs work in the caller's working directory, as a ``train_net.py`` the user started there would: a relative path
in a ``key=value`` override names the same file to the tool and to its runs."""
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Sequence

from ..child_processes import child_environment
from .process_monitor import live_group_members

__all__ = ["TEMPORARY_FILE", "TrainingCommand", "TrainingProcess", "last_error",
           "prepare_runs_folder", "removed_on_error", "user_path"]

POLL_S = 0.002
_ITERATION_LINE = re.compile(rb"\biter: (\d+) ")
_START_LINE = re.compile(rb"Starting training from iteration (\d+)")
# atomic_write's temporary files: ".<final name>.<random>.tmp"; group 1 is the final name
TEMPORARY_FILE = re.compile(r"^\.(.+?)\.[^.]+\.tmp$")
# how long a killed run's process group may take to disappear (its workers are reaped by init)
_GROUP_EXIT_S = 10.0
_GROUP_POLL_S = 0.01


@dataclass(frozen=True)
class TrainingCommand:
    """How to start ``train_net.py`` (its path): the config and its ``key=value`` overrides, ``OMP_NUM_THREADS`` of
    the runs, and the seconds a run may take before it is killed. Relative paths (the config file, the output folders,
    paths in overrides) are taken from this process's working directory, where the runs work too."""

    config_file: str
    overrides: Sequence[str]
    train_net: str
    threads: int = 1
    timeout_s: float = 300.0

    def argv(self, output_dir, resume):
        argv = [sys.executable, self.train_net, "--config-file", user_path(self.config_file)]
        output = f"train.output_dir={user_path(output_dir)}"
        return argv + (["--resume"] if resume else []) + [*self.overrides, output]

    def start(self, output_dir, log_path, resume=False, poll_s=POLL_S):
        """Launches a run writing into ``output_dir``; its output is appended to ``log_path``."""
        env = child_environment(dict(os.environ, OMP_NUM_THREADS=str(self.threads), PYTHONUNBUFFERED="1"))
        return TrainingProcess(self.argv(output_dir, resume), env, log_path, output_dir, self.timeout_s, poll_s)


class TrainingProcess:
    """A running ``train_net.py`` whose log and output folder are watched: the iterations it logged with the time
    each was first seen, the temporary files of checkpoint writes with the times they were present."""

    def __init__(self, argv, env, log_path, output_dir, timeout_s, poll_s=POLL_S):
        self.output_dir = output_dir
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._log = open(log_path, "ab")
        self._reader = open(log_path, "rb")
        self._reader.seek(0, os.SEEK_END)
        self._text = b""
        self.left_before = set(self.temporary_files())  # by an earlier killed run; not this run's writes
        self.start = time.monotonic()
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        self.start_iteration = self.started_at = None  # from the "Starting training" line, when it was seen
        self.iterations = {}  # iteration -> monotonic time its log line was seen
        self.temporaries = {}  # temporary file name -> [final file name, first seen, last seen]

    @property
    def pid(self):
        return self.process.pid

    def temporary_files(self):
        try:
            return [entry.name for entry in os.scandir(self.output_dir) if TEMPORARY_FILE.match(entry.name)]
        except FileNotFoundError:
            return []

    def poll(self):
        """Reads what the log and the output folder show now; returns the monotonic time of the look."""
        now = time.monotonic()
        self._text += self._reader.read()
        lines = self._text.split(b"\n")
        self._text = lines.pop()
        for line in lines:
            started = _START_LINE.search(line)
            if started:
                self.start_iteration, self.started_at = int(started.group(1)), now
            for match in _ITERATION_LINE.finditer(line):
                self.iterations.setdefault(int(match.group(1)), now)
        for name in self.temporary_files():
            self.temporaries.setdefault(name, [TEMPORARY_FILE.match(name).group(1), now, now])[2] = now
        return now

    def first_write(self, final_name):
        """When a temporary file of ``final_name`` was first seen (None: not yet)."""
        seen = [first for final, first, _ in self.temporaries.values() if final == final_name]
        return min(seen) if seen else None

    def last_iteration(self):
        return max(self.iterations) if self.iterations else None

    def kill(self):
        """SIGKILL to the run's process group; returns once no process of the group is left (a run started next
        into the same folder must not meet a worker of this one)."""
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + _GROUP_EXIT_S
        while live_group_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(_GROUP_POLL_S)

    def wait(self, trigger=None, on_poll=None):
        """Polls every ``poll_s`` until the process exits, or until ``trigger(self)`` returns a moment that has come
        (then the process group is killed); ``on_poll(self, now)`` runs after each look. Returns True when killed.
        Raises TimeoutError when the run goes past its time limit; the run is killed whenever the wait ends in an
        exception (Ctrl-C included: the run is in its own session, so a terminal's Ctrl-C never reaches it)."""
        kill_at = None
        try:
            while self.process.poll() is None:
                now = self.poll()
                if on_poll is not None:
                    on_poll(self, now)
                if now - self.start > self.timeout_s:
                    raise TimeoutError(f"a training process ran past its time limit ({self.timeout_s:g} s)")
                if kill_at is None and trigger is not None:
                    kill_at = trigger(self)
                if kill_at is not None and now >= kill_at:
                    self.kill()
                    return True
                time.sleep(self.poll_s)
        except BaseException:
            self.kill()
            raise
        self.poll()
        return False

    def close(self):
        self._log.close()
        self._reader.close()


def last_error(log_path):
    """The last ``error:`` line of a run's log, else its last line."""
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1]


def prepare_runs_folder(path, prefix):
    """The folder a tool puts its runs in: ``path`` (created; it must be new or empty) or, when None, a new
    temporary folder named ``prefix``... Returns (folder, whether it is temporary)."""
    if path is None:
        return tempfile.mkdtemp(prefix=prefix), True
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"--output {path} must be a new or empty folder (the runs are written there)")
    os.makedirs(path, exist_ok=True)
    return path, False


def user_path(path):
    """``path`` (None passes) as an absolute path, relative paths taken from this process's working directory (the
    user's), which the printed commands and reports can then be read from anywhere."""
    return None if path is None else os.path.abspath(path)


@contextlib.contextmanager
def removed_on_error(folder, temporary):
    """Removes ``folder`` when the block raises (an error, Ctrl-C) and the folder is ``temporary``: nobody is told
    where it is, so it would be left behind. A folder the user named is kept."""
    try:
        yield
    except BaseException:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
        raise
