"""Results written under a temporary name next to their final place and renamed into it once complete (checkpoints,
exported graphs, videos, the tree-data cache), so that no reader ever sees half of one.

The writer holds a kernel lock (``fcntl.flock``) on its temporary file or folder for as long as it lives. The kernel
drops the lock when the writer dies, however it dies, so a later run tells what a killed writer left behind (not
locked) from what a live one is writing (locked), and removes only the former (:func:`remove_abandoned`).
"""
import contextlib
import os
import shutil
import tempfile

try:
    import fcntl
except ImportError:  # not a POSIX system: nothing is locked, nothing is removed as abandoned
    fcntl = None

__all__ = ["PartialPath", "hold_descriptor", "naming_file", "release_descriptor", "remove_abandoned", "usual_mode"]

# Lock descriptors this process holds. A forked child (a data-loader worker) shares them, and a shared descriptor
# keeps an flock held until its last copy closes: each child closes its copies at once, so only this process's life
# decides how long a lock lives. Process-wide state by nature (it follows fork), hence module level.
_HELD_DESCRIPTORS = set()
# How often PartialPath makes a new file when a run removing abandoned ones took the one it made (a race of
# microseconds, which only a loop of such runs can make happen every time).
_CREATION_ATTEMPTS = 100


def _close_inherited_descriptors():
    for descriptor in _HELD_DESCRIPTORS:
        with contextlib.suppress(OSError):
            os.close(descriptor)
    _HELD_DESCRIPTORS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_descriptors)


@contextlib.contextmanager
def naming_file(path):
    """Within the block, an OSError that names no file is raised again naming ``path``. A full disk fails a
    ``write`` with only "[Errno 28] No space left on device", which left a user's one line without the file (or the
    folder) that could not be written."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        raise type(error)(error.errno, error.strerror, os.fspath(path)) from error


def hold_descriptor(descriptor):
    """Marks ``descriptor`` (holding a lock) as this process's own: a forked child closes its copy."""
    _HELD_DESCRIPTORS.add(descriptor)


def release_descriptor(descriptor):
    """Closes a descriptor given to :func:`hold_descriptor`, which releases its lock."""
    _HELD_DESCRIPTORS.discard(descriptor)
    os.close(descriptor)


def usual_mode(folder=False):
    """The mode a file (0o666) or folder (0o777) gets from the process's umask: ``mkstemp`` and ``mkdtemp`` make
    private ones (0o600, 0o700), which a result renamed into place must not keep."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


class PartialPath:
    """A new temporary file (or folder, ``folder=True``) named ``<prefix><random><suffix>`` in ``parent``, with the
    usual mode, locked by this process until :meth:`close`; ``close`` removes it unless it was renamed away meanwhile
    (kept as the result). Use as a context manager or call :meth:`close` yourself.

    ``path`` is what the writer writes (a file it opens by name, or the folder it fills); renaming it into its final
    place is the writer's step, after which ``close`` only releases the lock.
    """

    def __init__(self, parent, prefix, suffix="", folder=False):
        self.path, self._descriptor = None, None
        for _ in range(_CREATION_ATTEMPTS):
            if folder:
                path = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent)
                descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            else:
                descriptor, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
            if fcntl is not None:
                with contextlib.suppress(OSError):  # a file system without locks: written unlocked
                    fcntl.flock(descriptor, fcntl.LOCK_EX)
            # A run removing abandoned ones may have locked and removed this one between its creation and our lock:
            # it is ours only if the name still leads to what we locked.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(descriptor), os.stat(path)):
                    break
            os.close(descriptor)
        else:
            raise OSError(f"cannot create a temporary {'folder' if folder else 'file'} in {parent}: each one made "
                          f"was removed at once ({_CREATION_ATTEMPTS} tries)")
        self.path, self._descriptor = path, descriptor
        hold_descriptor(descriptor)
        os.chmod(path, usual_mode(folder))

    @property
    def descriptor(self):
        """The open descriptor of the temporary file (the folder's, for a folder); valid until :meth:`close`."""
        return self._descriptor

    def close(self):
        """Removes the temporary file or folder if it is still there, and releases its lock."""
        if self._descriptor is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(self._descriptor), os.lstat(self.path)):
                    _remove(self.path)
        finally:
            release_descriptor(self._descriptor)
            self._descriptor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def remove_abandoned(parent, prefix, suffix="", folders=False):
    """Removes the files (the folders, with ``folders=True``) of ``parent`` named ``<prefix>...<suffix>`` that no live
    process holds: those a killed writer of :class:`PartialPath` left; those being written are kept. Returns the
    removed paths."""
    if fcntl is None or not os.path.isdir(parent):
        return []
    removed = []
    for entry in sorted(os.scandir(parent), key=lambda entry: entry.name):
        if not (entry.name.startswith(prefix) and entry.name.endswith(suffix)) or entry.is_symlink():
            continue
        is_folder = entry.is_dir(follow_symlinks=False)
        if is_folder != folders:
            continue
        try:
            descriptor = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                                 | (getattr(os, "O_DIRECTORY", 0) if is_folder else 0))
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(descriptor), os.lstat(entry.path)):
                _remove(entry.path)  # removed while locked: a writer that locks it next sees it gone
                removed.append(entry.path)
        except OSError:  # locked: a live writer's; or gone meanwhile
            pass
        finally:
            os.close(descriptor)
    return removed
