"""Checkpoints that are never half-written, resume that survives what a crash leaves behind, and clear errors for
missing files and full disks."""
import errno
import glob
import json
import logging
import os
import re

import torch

from ..checkpoint import (CLASSES_KEY, CheckpointError, FocusDETRCheckpointer, UnreadableCheckpointError,
                          is_official_layout, write_safetensors)
from ..checkpoint.safe_load import checked_checkpoint_path
from ..partial_files import PartialPath, naming_file, remove_abandoned
from .interrupt import stop_signals_deferred

__all__ = ["CLASSES_KEY", "AtomicDetectionCheckpointer", "CheckpointNotSavedError", "atomic_write",
           "read_checkpoint_tag", "same_file", "save_weights", "write_json"]

logger = logging.getLogger(__name__)

class CheckpointNotSavedError(CheckpointError):
    """A training checkpoint that could not be written (a full disk, a folder no longer writable); the message names
    it, why, and the checkpoint kept."""


# Names of the checkpoints ResumableCheckpointHook writes: <prefix>_<7-digit iteration>.pth, <prefix>_final.pth.
_CHECKPOINT_NAME = re.compile(r"^(.+)_(?:\d{7}|final)\.pth$")


# A tag holds one file name; more than this is not one (a link to /dev/zero would be read until memory ran out).
_TAG_BYTES = 4096


def read_checkpoint_tag(folder):
    """``(name, problem)`` of ``folder``'s ``last_checkpoint``: the checkpoint file name it holds, or why it cannot
    be used (one line naming the tag); ``(None, None)`` when there is no tag. A tag is a file name of ``folder``, as
    detectron2 writes it: a path elsewhere (another run's checkpoint) is a problem, not followed."""
    tag = os.path.join(folder, "last_checkpoint")
    if not os.path.lexists(tag):
        return None, None
    if not os.path.isfile(tag):
        return None, f"{tag} is not a regular file"
    try:
        with open(tag, "rb") as f:
            name = f.read(_TAG_BYTES + 1).decode("utf-8").strip()
    except OSError as error:
        return None, f"cannot read {tag}: {error.strerror or error}"
    except UnicodeDecodeError:
        return None, f"{tag} is not text (it holds the name of a checkpoint)"
    if not name:
        return None, f"{tag} is empty"
    if len(name) > _TAG_BYTES or "\n" in name or os.path.basename(name) != name or name in (".", ".."):
        shown = name if len(name) <= 300 and "\n" not in name else name[:300].split("\n")[0] + "..."
        return None, f"{tag} names {shown!r}, not a file of {folder} (it holds the name of one of its checkpoints)"
    return name, None


def atomic_write(path, write_fn, mode="wb"):
    """Writes through a temporary file in the same folder and renames it over ``path`` (``os.replace`` is atomic on
    POSIX and Windows), so a crash or a full disk leaves either the old file or the new one, never a torn one. The
    temporary file (``.<name>.<random>.tmp``) is locked while written: what a killed writer leaves is told apart by
    :func:`focus_detr.partial_files.remove_abandoned`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # A Ctrl-C meanwhile takes effect once the file is in place: cut short, torch.save's clean-up fails on the torn
    # file (a traceback instead of the interrupt) and its writer can abort the process later.
    with naming_file(path), stop_signals_deferred(), \
            PartialPath(folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp") as tmp:
        with open(tmp.path, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp.path, path)


def same_file(a, b):
    """Whether the paths ``a`` and ``b`` name one file (or folder), through links and relative parts; two empty paths
    (no file) are the same, an empty and a given one are not."""
    return (os.path.realpath(a) if a else "") == (os.path.realpath(b) if b else "")


def write_json(path, data, indent=2, allow_nan=True):
    """``data`` as JSON in ``path``, through :func:`atomic_write`: a tool killed while writing its report leaves the
    earlier file or none, never a torn one. ``allow_nan=False``: a NaN or infinity is a ValueError (standard JSON has
    none), not Python's bare ``NaN``."""
    text = json.dumps(data, indent=indent, allow_nan=allow_nan)
    atomic_write(path, lambda f: f.write(text), mode="w")


def _write_error(error):
    """The OSError behind a failed write: ``error`` itself, or the one torch.save's zip writer raises a RuntimeError
    from ("[enforce fail at inline_container.cc] unexpected pos ..." on a full disk); None for any other error."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _why_not_written(error):
    return "no space left on device" if error.errno in (errno.ENOSPC, errno.EDQUOT) else (error.strerror or str(error))


def save_weights(path, state_dict, thing_classes=None):
    """Writes model weights alone (name -> tensor), atomically: a safetensors file when ``path`` ends in
    ``.safetensors`` (tensors only: any reader can load it without running code), else a torch file holding
    ``{"model": state_dict}``. Both load with ``train.init_checkpoint``. ``thing_classes``: the class names of the
    model's outputs, recorded as a training checkpoint records them (:data:`CLASSES_KEY`; in a safetensors file, as
    JSON in its header's ``__metadata__``); None: none. A full disk is a one-line CheckpointError."""
    classes = None if thing_classes is None else [str(name) for name in thing_classes]

    def write(f):
        if str(path).endswith(".safetensors"):
            metadata = {"format": "pt"}  # "pt": Hugging Face readers' convention
            if classes is not None:
                metadata[CLASSES_KEY] = json.dumps(classes)
            write_safetensors(f, state_dict, metadata=metadata)
        else:
            torch.save({"model": state_dict, **({CLASSES_KEY: classes} if classes is not None else {})}, f)

    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as error:
        write_error = _write_error(error)
        if write_error is None:
            raise
        raise CheckpointError(f"cannot save weights {path}: {_why_not_written(write_error)}") from error


class AtomicDetectionCheckpointer(FocusDETRCheckpointer):
    """The project's checkpointer (reads weights files of any format without running code from them) with:

    - atomic writes of the checkpoint and of the ``last_checkpoint`` tag; a full disk is a one-line
      :class:`CheckpointError` and the previous checkpoint stays;
    - resume from the newest readable checkpoint when ``last_checkpoint`` names a missing or corrupt file
      (with a warning; never a silent restart from iteration 0);
    - removal of the temporary files a killed save leaves (:meth:`remove_stale_temporary_files`);
    - a one-line ``FileNotFoundError`` for a missing checkpoint.

    Args:
        model (nn.Module): the model (a DDP wrapper is unwrapped).
        save_dir (str): folder of the checkpoints and of the ``last_checkpoint`` tag.
        output_claim (OutputDirClaim): the lock the run holds on ``save_dir``
            (:func:`~focus_detr.engine.output_lock.claim_output_dir`), checked before each save: a folder removed
            or replaced meanwhile is an error, not created again. None: not checked.
        allow_partial, require_detector, other_class_count (bool): see ``FocusDETRCheckpointer``;
            ``other_class_count`` applies to the initial weights of :meth:`resume_or_load`, never to a resume.
        thing_classes (list of str or None): the training set's class names, in the order of the model's outputs,
            which every checkpoint :meth:`save` writes records as ``thing_classes`` (plain data, which the safe
            reader accepts), and every weights file :meth:`save_weights` writes (a safetensors file in its header),
            for the commands that later name the outputs by a dataset's classes.
        **checkpointables: objects with ``state_dict``/``load_state_dict`` saved alongside (e.g. ``trainer``).
    """

    def __init__(self, model, save_dir="", output_claim=None, *, thing_classes=None, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.output_claim = output_claim
        self.thing_classes = None if thing_classes is None else [str(name) for name in thing_classes]
        self._resuming = False  # within resume_or_load's loading of the run's own checkpoint

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        if self.output_claim is not None:
            done = f"iteration {kwargs['iteration']}" if "iteration" in kwargs else "training"
            self.output_claim.check(f"the checkpoint of {done} ({name}.pth) is not written, nor anything since the "
                                    "last one")
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.thing_classes is not None:
            data[CLASSES_KEY] = list(self.thing_classes)
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        try:
            atomic_write(save_file, lambda f: torch.save(data, f))
            self.tag_last_checkpoint(basename)
        except (OSError, RuntimeError) as error:
            write_error = _write_error(error)
            if write_error is None:
                raise
            previous, _ = read_checkpoint_tag(self.save_dir)  # (an unusable tag must not hide this error)
            previous = os.path.join(self.save_dir, previous) if previous else None
            kept = f"the previous checkpoint {previous} is kept" if previous else "no earlier checkpoint exists"
            raise CheckpointNotSavedError(f"cannot save checkpoint {save_file}: {_why_not_written(write_error)} "
                                          f"({kept})") from error

    def save_weights(self, name, state_dict=None):
        """Writes ``save_dir/name`` with the weights alone (default: the model's) and ``thing_classes``, as
        :func:`save_weights` does: for publishing or ``train.init_checkpoint``, not for ``--resume`` (which needs the
        optimizer, scheduler, RNG and data position, hence a ``.pth`` from :meth:`save`). Returns the path."""
        path = os.path.join(self.save_dir, name)
        if self.output_claim is not None:
            self.output_claim.check(f"{name} is not written")
        self.logger.info(f"Saving weights to {path}")
        save_weights(path, self.model.state_dict() if state_dict is None else state_dict, self.thing_classes)
        return path

    def tag_last_checkpoint(self, last_filename_basename):
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(save_file, lambda f: f.write(last_filename_basename), mode="w")

    def remove_stale_temporary_files(self):
        """Deletes the temporary files of saves that were killed midway (only complete files are ever renamed into
        place, so these are never needed). Call it before this run saves anything; returns the removed paths."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        stale = remove_abandoned(self.save_dir, ".", ".tmp")
        if stale:
            logger.warning(f"Removed {len(stale)} temporary file(s) left by an interrupted save: {stale}")
        return stale

    def has_checkpoint(self):
        """Whether ``save_dir`` has a ``last_checkpoint`` tag, also one that cannot be used (a dangling link: fvcore
        said no, and a resume started a new run over the finished one's checkpoints)."""
        return os.path.lexists(os.path.join(self.save_dir, "last_checkpoint"))

    def get_checkpoint_file(self):
        """The checkpoint ``last_checkpoint`` names, in ``save_dir``; a CheckpointError naming the tag when it cannot
        be used (fvcore returned "" for an unreadable tag, which loaded nothing and counted as a resume)."""
        name, problem = read_checkpoint_tag(self.save_dir)
        if problem is not None:
            raise CheckpointError(problem)
        return os.path.join(self.save_dir, name) if name is not None else ""

    def resume_candidates(self):
        """``(candidates, problems)``: the checkpoint ``last_checkpoint`` names, then the other checkpoints of
        ``save_dir`` named like it (``<prefix>_<iteration>.pth``, ``<prefix>_final.pth``), newest first; a tag that
        cannot be used is a problem, and the others remain."""
        try:
            tagged, problems = [self.get_checkpoint_file()], []
        except CheckpointError as error:
            tagged, problems = [], [str(error)]
        match = _CHECKPOINT_NAME.match(os.path.basename(tagged[0])) if tagged else None
        prefix = match.group(1) if match else "model"
        others = [
            path for path in glob.glob(os.path.join(self.save_dir, f"{glob.escape(prefix)}_*.pth"))
            if _CHECKPOINT_NAME.match(os.path.basename(path))
            and not (tagged and os.path.abspath(path) == os.path.abspath(tagged[0]))
        ]
        others.sort(key=lambda path: (os.path.getmtime(path), path), reverse=True)
        return tagged + others, problems

    def last_checkpoint(self):
        """``(path, problems)``: the checkpoint a resume continues from without loading it (``last_checkpoint``'s,
        else the newest of ``save_dir``; None when there is none) and why the tag's was passed over."""
        candidates, problems = self.resume_candidates() if self.has_checkpoint() else ([], [])
        for candidate in candidates:
            if os.path.isfile(candidate):
                return candidate, problems
            problems.append(f"{candidate} does not exist")
        return None, problems

    def resume_or_load(self, path, *, resume=True):
        """detectron2's ``resume_or_load``; on resume, a ``last_checkpoint`` that cannot be used or names a missing or
        unreadable file falls back to the newest readable checkpoint of ``save_dir`` with a warning, and none readable
        is an error. ``resumed_from`` then names the checkpoint the run continues from."""
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        # a run's own checkpoint fits its model; another class count is for initial weights only
        self.other_class_count = False
        tag = os.path.join(self.save_dir, "last_checkpoint")
        if os.path.isdir(tag) and not os.path.islink(tag):  # the first save would fail to write the tag over it
            raise CheckpointError(f"cannot resume from {self.save_dir}: {tag} is a folder, where the run writes the "
                                  "name of its last checkpoint; remove that folder")
        candidates, problems = self.resume_candidates()
        for candidate in candidates:
            self._resuming = True
            try:
                extra = self.load(candidate)
            except (FileNotFoundError, UnreadableCheckpointError) as error:
                problems.append(str(error))
                continue
            finally:
                self._resuming = False
            if problems:
                logger.warning(f"Resumed from {candidate}, the newest readable checkpoint, instead of: " + "; ".join(problems))
            self.resumed_from = candidate
            return extra
        raise CheckpointError(
            f"cannot resume from {self.save_dir}: no readable checkpoint ({'; '.join(problems)}); "
            "remove the folder's last_checkpoint to start from scratch"
        )

    def _load_model(self, checkpoint):
        if self._resuming and is_official_layout(checkpoint["model"]):
            # detrex's optimizer holds its parameters in another order: its Adam moments would land on parameters of
            # other shapes (torch then fails deep inside, or crashes) or, where the shapes agree, on the wrong ones
            raise CheckpointError(
                f"cannot resume from {self._source}: it is a detrex (official Focus-DETR) checkpoint, whose optimizer "
                "and schedule state do not fit this project's trainer; start a new run from its weights with "
                f"train.init_checkpoint={self._source} in another train.output_dir (without --resume)")
        return super()._load_model(checkpoint)

    def load(self, path, *args, **kwargs):
        """``FocusDETRCheckpointer.load`` (a missing local file is a one-line error); a URL that cannot be fetched is a
        one-line FileNotFoundError saying to download it."""
        path = checked_checkpoint_path(path, allow_empty=True)  # a pathlib.Path, before the "://" test below
        try:
            return super().load(path, *args, **kwargs)
        except OSError as error:  # includes urllib's URLError: no network, unknown host, HTTP errors
            if not path or "://" not in path:
                raise
            raise FileNotFoundError(
                f"cannot fetch checkpoint {path} ({error}); download it and set train.init_checkpoint to the local file"
            ) from error
