"""A DetectionCheckpointer that also reads official detrex Focus-DETR checkpoints and refuses partial loads."""
import pickle

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .official import convert_official_state_dict, is_official_layout

# Prefixes of a complete detector: a checkpoint with any of them must fill the whole model.
_DETECTOR_PREFIXES = ("transformer.", "class_embed.", "bbox_embed.")


class FocusDETRCheckpointer(DetectionCheckpointer):
    """Loads our checkpoints, official detrex Focus-DETR ones (converted on the fly) and backbone-only weights.

    A checkpoint holding detector weights must match the model exactly: missing or unexpected keys raise a
    ``ValueError`` naming them, unless ``allow_partial=True``. Backbone-only checkpoints (ImageNet initialisation)
    load partially, as in detectron2. Files are read with ``torch.load(weights_only=True)``.
    """

    def __init__(self, model, save_dir="", *, allow_partial: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_partial = allow_partial

    def load_model_state(self, state_dict):
        """Loads an in-memory state dict (ours or official) with the same conversion and checks as :meth:`load`."""
        incompatible = self._load_model({"model": dict(state_dict)})
        self._log_incompatible_keys(incompatible)
        return incompatible

    def _torch_load(self, f):
        try:
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"checkpoint {f} holds objects other than tensors and plain containers; refusing to unpickle it "
                f"(weights_only=True). Re-save just its 'model' state dict. ({e})"
            ) from e

    def _load_model(self, checkpoint):
        state_dict = checkpoint["model"]
        if is_official_layout(state_dict):
            self.logger.info("Checkpoint is in the official detrex Focus-DETR layout; converting its keys.")
            checkpoint["model"] = state_dict = convert_official_state_dict(state_dict)
        is_detector = any(k.startswith(_DETECTOR_PREFIXES) for k in state_dict)
        incompatible = super()._load_model(checkpoint)
        if is_detector and not self.allow_partial:
            problems = []
            if incompatible.missing_keys:
                problems.append(f"missing keys: {sorted(incompatible.missing_keys)}")
            if incompatible.unexpected_keys:
                problems.append(f"unexpected keys: {sorted(incompatible.unexpected_keys)}")
            if incompatible.incorrect_shapes:
                problems.append(f"shape mismatches (key, checkpoint, model): {incompatible.incorrect_shapes}")
            if problems:
                raise ValueError(
                    "checkpoint does not match the model (pass allow_partial=True to load anyway): " + "; ".join(problems)
                )
        return incompatible
