"""One run per output folder: a lock file inside ``train.output_dir`` that a training or evaluation run holds while it
writes there, so a second run into the same folder is refused with one line naming the process that holds it,
instead of interleaving checkpoints, ``last_checkpoint``, metrics and events.

The lock is the kernel's (``fcntl.flock``), not the file's existence: the kernel releases it when the holding process
dies, however it dies, so the file a killed run leaves behind never blocks the next run. The file only carries the
holder's pid, host and start time for the message.
"""
import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import stat
from typing import NamedTuple

from ..partial_files import hold_descriptor, release_descriptor
from ..special_files import special_file_kind
from .checkpoint import read_checkpoint_tag
from .config import ConfigError
from .settings import check_output_dir

try:
    import fcntl
except ImportError:  # not a POSIX system: runs go unlocked (with a warning)
    fcntl = None

__all__ = ["LOCK_FILE_NAME", "OutputDirClaim", "OutputDirInUseError", "OutputDirLock", "OutputDirReplacedError",
           "claim_output_dir", "check_no_earlier_run", "names_file"]

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = ".focus_detr.lock"


class OutputDirInUseError(ConfigError):
    """Another live process holds the output folder's lock (message names the folder and the process)."""


class OutputDirReplacedError(ConfigError):
    """The output folder a run holds was removed or replaced while it ran (message names the folder)."""


def names_file(path, status):
    """Whether ``path`` names the file (or folder) whose ``os.stat`` result is ``status`` (False when nothing is
    there)."""
    try:
        return os.path.samestat(status, os.stat(path))
    except (FileNotFoundError, NotADirectoryError):
        return False


def _take(descriptor):
    """Takes the exclusive lock of ``descriptor`` without waiting; False when a live process holds it. This is the
    test of liveness: the kernel drops a process's lock when it dies, however it dies."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class OutputDirClaim(NamedTuple):
    """The lock file a run holds, by identity: what the processes writing into the folder (the launching one's
    started processes too: it is picklable) check before each checkpoint with :meth:`check`. While the holder keeps
    the file open, no other file can have its device and inode numbers."""

    folder: str
    key: str
    path: str
    device: int
    inode: int

    def lost(self):
        """Why the folder's lock file is no longer the one the run holds ("<path> is gone", "<path> is another
        file, ..."), or None while it is."""
        try:
            status = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return f"{self.path} is gone"
        if (status.st_dev, status.st_ino) == (self.device, self.inode):
            return None
        return f"{self.path} is another file, maybe another run's lock"

    def check(self, unsaved):
        """Raises :class:`OutputDirReplacedError` when the folder's lock file is no longer the one the run holds: the
        folder was removed (a save would create it again, holding only checkpoints) or replaced (maybe by a new run's
        folder: a save would mix the two runs). ``unsaved``: what the run therefore leaves unwritten."""
        why = self.lost()
        if why is None:
            return
        raise OutputDirReplacedError(
            f"{self.key} {self.folder} was removed or replaced while this run wrote there ({why}): the run stops "
            f"without writing into it, so {unsaved} (its earlier checkpoints went with the folder); start the run "
            f"again, or resume it where the folder was moved to, in a {self.key} of its own")


def _read_holder(descriptor):
    """The holder record (pid, host, started) written in the lock file, or {} when unreadable."""
    try:
        os.lseek(descriptor, 0, os.SEEK_SET)
        holder = json.loads(os.read(descriptor, 4096).decode())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder):
    if "pid" not in holder:
        return "a process that has not written its pid yet"
    where = f" on {holder['host']}" if holder.get("host") and holder["host"] != socket.gethostname() else ""
    since = f", since {holder['started']}" if holder.get("started") else ""
    return f"pid {holder['pid']}{where}{since}"


class OutputDirLock:
    """Holds ``<folder>/.focus_detr.lock`` (exclusive, non-blocking ``flock``) between :meth:`acquire` and
    :meth:`release` (or as a context manager). ``acquire`` raises :class:`OutputDirInUseError` when a live process
    holds it. The file is removed on release; a file left by a killed process is simply taken over.

    Args:
        folder (str): an existing folder.
        key (str): how the user names the folder (the config key or the option), for messages.
        lock_name (str): the lock file's name; another name is another lock on the same folder.
    """

    def __init__(self, folder, key="train.output_dir", lock_name=LOCK_FILE_NAME):
        self.folder = folder
        self.key = key
        self.path = os.path.join(folder, lock_name)
        self._descriptor = None

    def acquire(self):
        if fcntl is None:
            logger.warning(f"No file locks on this system: nothing stops a second run from writing into {self.folder}")
            return self
        while True:
            # never through a symbolic link: the file is truncated and written; non-blocking: a named pipe in its
            # place must not wait for a reader
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0),
                                 0o666)
            mode = os.fstat(descriptor).st_mode
            if not stat.S_ISREG(mode):  # its truncation failed with a bare "Invalid argument"
                os.close(descriptor)
                what = special_file_kind(mode) or "not a regular file"
                raise ConfigError(f"{self.key} {self.folder}: {self.path} is {what}, where a run keeps its lock file: "
                                  "remove it")
            try:
                taken = _take(descriptor)
            except OSError as error:
                os.close(descriptor)
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                    raise
                logger.warning(f"Cannot lock {self.path} ({error.strerror}): nothing stops a second run from writing "
                               f"into {self.folder} at the same time")
                return self
            if not taken:
                holder = _read_holder(descriptor)
                os.close(descriptor)
                raise OutputDirInUseError(
                    f"{self.key} {self.folder} is in use by another run ({_describe(holder)}): wait for it to end, "
                    f"or choose another {self.key}"
                )
            # A holder releasing the lock removes the file: if that happened between our open and our lock, we hold
            # a file no one else will look at; open the current one again.
            if names_file(self.path, os.fstat(descriptor)):
                break
            os.close(descriptor)
        self._descriptor = descriptor
        hold_descriptor(descriptor)  # a forked data-loader worker must not keep the folder locked
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(record) + "\n").encode(), 0)
        return self

    def claim(self):
        """The :class:`OutputDirClaim` of the lock held, or None when none is (no file locks on this system)."""
        if self._descriptor is None:
            return None
        status = os.fstat(self._descriptor)
        return OutputDirClaim(self.folder, self.key, self.path, status.st_dev, status.st_ino)

    def release(self):
        """Releases the lock and removes its file. Runs while the run's own error is on its way: a file that cannot
        be removed (a folder no longer writable) is a warning, never an error in the error's place."""
        if self._descriptor is None:
            return
        descriptor, self._descriptor = self._descriptor, None
        try:
            # removed while still locked, so a run that opened this file meanwhile notices and opens the new one;
            # left when the path names another file (the folder was replaced: maybe by another run's, whose lock it is)
            if names_file(self.path, os.fstat(descriptor)):
                os.remove(self.path)
        except OSError as error:
            logger.warning(f"Cannot remove the lock file {self.path} ({error.strerror or error}): the lock is released "
                           "all the same (a file no process holds blocks no run)")
        finally:
            release_descriptor(descriptor)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


def check_no_earlier_run(folder, key="train.output_dir"):
    """Raises ConfigError when ``folder`` holds the checkpoints of an earlier run (a ``last_checkpoint`` tag), which
    a new run from scratch would overwrite and mix its metrics with: the message says how to resume it instead; or
    checkpoint files (``model_*.pth`` / ``.safetensors``) without that tag, which it would write over."""
    if not os.path.lexists(os.path.join(folder, "last_checkpoint")):
        # checkpoints without the tag (copied in, or the tag deleted): a new run would still write over them
        names = sorted(name for name in os.listdir(folder) if name.startswith("model_")
                       and name.endswith((".pth", ".safetensors"))) if os.path.isdir(folder) else []
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise ConfigError(f"{key} {folder} holds checkpoints ({shown}) that a new run would write over: choose "
                              f"another {key}, or move them away")
        return
    named, problem = read_checkpoint_tag(folder)
    tag = f"last_checkpoint names {named}" if named else problem
    if os.path.isdir(os.path.join(folder, "last_checkpoint")):  # neither run can write the tag over it
        raise ConfigError(f"{key} {folder} holds a folder named last_checkpoint, where a run writes the name of its "
                          "last checkpoint: remove that folder")
    raise ConfigError(
        f"{key} {folder} holds an earlier run's checkpoints ({tag}): add --resume to continue that run, or choose "
        f"another {key} (or remove that folder) to start a new one"
    )


@contextlib.contextmanager
def claim_output_dir(folder, key="train.output_dir", fresh_training=False, lock=True):
    """Creates ``folder`` and checks it is writable (``check_output_dir``), holds its lock for the block (unless
    ``lock`` is False, e.g. on the machines of a multi-machine run other than the first), and for ``fresh_training``
    (training without ``--resume``) refuses a folder that holds an earlier run's checkpoints. An empty ``folder``
    (no output) claims nothing. Yields the :class:`OutputDirClaim` (None when nothing is locked), for the training's
    checkpointer to check."""
    check_output_dir(folder, key)
    if not folder or not lock:
        yield None
        return
    with OutputDirLock(folder, key) as held:
        if fresh_training:
            check_no_earlier_run(folder, key)
        yield held.claim()
