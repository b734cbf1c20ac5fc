"""Checkpoints that are never half-written, and clear errors for missing files."""
import logging
import os
import tempfile

import torch
from ..checkpoint import FocusDETRCheckpointer

__all__ = ["AtomicDetectionCheckpointer"]

logger = logging.getLogger(__name__)


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write_fn, mode="wb"):
    """Writes through a temporary file in the same folder and renames it over ``path`` (``os.replace`` is atomic on
    POSIX and Windows), so a crash or a full disk leaves either the old file or the new one, never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


class AtomicDetectionCheckpointer(FocusDETRCheckpointer):
    """The project's checkpointer (reads our, official detrex and backbone checkpoints with ``weights_only=True``)
    with atomic writes of the checkpoint and of the ``last_checkpoint`` tag, and a one-line ``FileNotFoundError``
    for a missing checkpoint.

    Args:
        model (nn.Module): the model (a DDP wrapper is unwrapped).
        save_dir (str): folder of the checkpoints and of the ``last_checkpoint`` tag.
        allow_partial (bool): see ``FocusDETRCheckpointer``.
        **checkpointables: objects with ``state_dict``/``load_state_dict`` saved alongside (e.g. ``trainer``).
    """

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(save_file, lambda f: f.write(last_filename_basename), mode="w")

    def load(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            return super().load(path, *args, **kwargs)
        except OSError as error:  # includes urllib's URLError: no network, unknown host, HTTP errors
            if "://" not in path:
                raise
            raise FileNotFoundError(
                f"cannot fetch checkpoint {path} ({error}); download it and set train.init_checkpoint to the local file"
            ) from error
