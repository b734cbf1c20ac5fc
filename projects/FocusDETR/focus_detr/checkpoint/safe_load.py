"""Reading weights files without running code from them, whatever their extension.

A pickle can name any importable callable and have the unpickler call it, so a weights file from a stranger is a
program unless the reader refuses such names. Three readers cover every format the project accepts:

- torch files (zip archives, legacy ``torch.save`` files): ``torch.load(weights_only=True)``;
- safetensors files (tensors only, no code by construction): :func:`~.safetensors_io.read_safetensors`, which checks
  every header field;
- plain pickles (detectron2 / Detectron model-zoo ``.pkl`` files): :class:`WeightsUnpickler`, which builds only
  numpy arrays of numbers, numpy scalars and dtypes, numbers, strings, bytes, ``None`` and dicts / lists / tuples /
  sets / ``OrderedDict``.

The format is told from the file's content, not its name: a ``.pkl`` that is really a torch file (or the reverse)
goes through the reader that fits it.
"""
import collections
import os
import pickle
import re
import zipfile
from typing import Any, Dict, NamedTuple, Optional, Union

import numpy as np
import torch

from ..special_files import special_file_kind
from .safetensors_io import looks_like_safetensors, read_safetensors

__all__ = [
    "CheckpointError",
    "UnreadableCheckpointError",
    "WeightsFile",
    "WeightsUnpickler",
    "checked_checkpoint_path",
    "missing_checkpoint_error",
    "read_weights_file",
]

# First object of a legacy (non-zip) torch.save file.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

try:  # numpy >= 2 moved its core modules; pickles name either location
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


class CheckpointError(ValueError):
    """A weights file (or in-memory state dict) that cannot be used; the message names it and says why."""


class UnreadableCheckpointError(CheckpointError):
    """A weights file whose bytes cannot be read as weights (empty, truncated, corrupt, not weights, code)."""


def _latin1_encode(text, encoding="latin1"):
    # Protocol-2 pickles store bytes as ``_codecs.encode(str, "latin1")``; no other codec is needed, so none is allowed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not allowed")
    return text.encode("latin1")


def _allowed_globals():
    allowed = {("collections", "OrderedDict"): collections.OrderedDict, ("_codecs", "encode"): _latin1_encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _multiarray._reconstruct
        allowed[(module, "scalar")] = _multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = _numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for builtins_module in ("builtins", "__builtin__"):  # Python 2 pickles name the builtins module __builtin__
        for name, obj in (("set", set), ("frozenset", frozenset), ("complex", complex), ("bytearray", bytearray)):
            allowed[(builtins_module, name)] = obj
    return allowed


class WeightsUnpickler(pickle.Unpickler):
    """Unpickles weights: numpy arrays, numbers, strings and containers. Any other global (``os.system``,
    ``builtins.eval``, a class of some library) raises ``pickle.UnpicklingError`` naming it, before it is imported."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it refers to external (persistent) objects")


class WeightsFile(NamedTuple):
    """What :func:`read_weights_file` read: the ``content`` and its ``format``: "torch", "pickle" (both: whatever
    was pickled) or "safetensors" (a dict of tensors by name, and its header's ``metadata``, str -> str; None for
    the other formats)."""

    content: Any
    format: str
    metadata: Optional[Dict[str, str]] = None


def _why_torch_load_failed(error):
    """One clause for a failed ``torch.load``: its weights-only message is several lines of generic advice around
    the one line that matters."""
    message = str(error)
    refused = re.search(r"GLOBAL ([\w.]+)", message)
    if refused:
        return f"it refers to {refused.group(1)}"
    advice = ("Weights only load failed", "Check the documentation", "Please ", "You can use ", "Alternatively")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(advice)] or lines or [type(error).__name__]
    return useful[0].replace("WeightsUnpickler error: ", "")


def _object_arrays_in(obj, depth=0):
    if isinstance(obj, np.ndarray):
        return obj.dtype.hasobject
    if depth > 50:
        return False
    if isinstance(obj, dict):
        return any(_object_arrays_in(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return any(_object_arrays_in(v, depth + 1) for v in obj)
    return False


def _read_plain_pickle(path, f):
    content = WeightsUnpickler(f, encoding="latin1").load()
    if _object_arrays_in(content):
        raise pickle.UnpicklingError("it holds numpy arrays of Python objects rather than numbers")
    return content


def _special_file_kind(path):
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing, a broken link, no permission on a folder above: not found
        return None
    return special_file_kind(mode)


def missing_checkpoint_error(path):
    """The error for a checkpoint ``path`` (str) that is no regular file: a folder (a run's output folder, given for
    the checkpoint in it) is said to be one, a named pipe or device too (UnreadableCheckpointError: it exists), and
    a path starting with ``~`` is said not to be expanded (neither Python nor a config file does)."""
    if os.path.isdir(path):
        return IsADirectoryError(f"checkpoint {path} is a folder, not a weights file: give a file in it, e.g. "
                                 f"{os.path.join(path, 'model_final.pth')}")
    special = _special_file_kind(path)
    if special:
        return UnreadableCheckpointError(f"checkpoint {path} is {special}, not a regular file: give a weights file")
    home = " (~ is not expanded here: give the full path)" if path.startswith("~") else ""
    return FileNotFoundError(f"checkpoint not found: {path}{home}")


def checked_checkpoint_path(path, allow_empty=False):
    """``path`` (str or os.PathLike) as a str; TypeError (one line) for anything else (a state dict, an open file),
    which failed deep in urllib or as "argument of type ... is not iterable". With ``allow_empty``, None and "" are
    returned as they are (detectron2's "load nothing"); without, they are refused."""
    empty = isinstance(path, str) and not path  # not `path == ""`: an array or tensor given would compare elementwise
    if allow_empty and (path is None or empty):
        return path
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, str) and path:
        return path
    if empty:
        raise ValueError("checkpoint path is empty: give a weights file")
    hint = ""
    if isinstance(path, dict):
        hint = " (an in-memory state dict loads with FocusDETRCheckpointer.load_model_state)"
    kind = "None" if path is None else type(path).__name__
    raise TypeError(f"checkpoint path must be a str or os.PathLike (a weights file), got {kind}{hint}")


def read_weights_file(path: Union[str, os.PathLike], *, torch_safe_globals=()) -> WeightsFile:
    """Reads a weights file of any format and extension without running code from it.

    Args:
        path: a local file (str or os.PathLike; anything else is a TypeError).
        torch_safe_globals: extra classes a torch file may hold (``torch.serialization.safe_globals``), e.g. the
            ``TorchVersion`` a parity fixture records.

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: a folder.
        UnreadableCheckpointError: the file is empty, truncated, corrupt, not weights, or would run code; the message
            is one line: ``cannot read checkpoint <path>: <why>``; or it is no regular file (a named pipe, a device).
    """
    path = checked_checkpoint_path(path)
    if not os.path.isfile(path):
        raise missing_checkpoint_error(path)

    def unreadable(why):
        return UnreadableCheckpointError(f"cannot read checkpoint {path}: {why}")

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(9)
            if size == 0:
                raise unreadable("the file is empty (0 bytes)")
            if zipfile.is_zipfile(f) or head[:4] == b"PK\x03\x04":
                return WeightsFile(_torch_load(path, torch_safe_globals, unreadable), "torch")
            if looks_like_safetensors(head):
                tensors, metadata = read_safetensors(f, size, unreadable)
                return WeightsFile(tensors, "safetensors", metadata)
            f.seek(0)
            try:
                first = _read_plain_pickle(path, f)
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                    OverflowError, MemoryError, UnicodeDecodeError) as error:
                raise unreadable(_why_pickle_failed(error)) from None
            if isinstance(first, int) and first == _TORCH_LEGACY_MAGIC:
                return WeightsFile(_torch_load(path, torch_safe_globals, unreadable), "torch")
            return WeightsFile(first, "pickle")
    except OSError as error:
        raise unreadable(error.strerror or str(error)) from None


def _why_pickle_failed(error):
    if isinstance(error, EOFError):
        return "the file is truncated (pickle data ended early)"
    if isinstance(error, pickle.UnpicklingError) and str(error).startswith("it "):
        return f"{error}, which is not allowed in a weights file (only arrays, numbers, strings and containers)"
    return (f"it is neither a torch file (zip archive), a safetensors file nor a valid pickle "
            f"({type(error).__name__}: {error})")


def _torch_load(path, safe_globals, unreadable):
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        why = _why_torch_load_failed(error)
        if why.startswith("it refers to"):
            why += ", which is not allowed in a weights file (only tensors, numbers, strings and containers)"
        raise unreadable(why) from None
    except (RuntimeError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError,
            zipfile.BadZipFile) as error:
        why = _why_torch_load_failed(error)
        if isinstance(error, EOFError) or "failed finding central directory" in why or "truncated" in why.lower():
            why = "the file is truncated or corrupt (its zip archive has no central directory)"
        raise unreadable(why) from None
    except OSError as error:  # torch's zip reader cut short mid-record: "Invalid argument" alone said nothing
        raise unreadable(f"the file is truncated or corrupt (reading its zip archive failed: "
                         f"{error.strerror or error})") from None
