"""A DetectionCheckpointer that reads weights without running code from them, also reads official detrex
Focus-DETR checkpoints, and refuses partial loads of detector weights."""
from urllib.parse import parse_qs

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from .official import convert_official_state_dict, is_official_layout
from .safe_load import CheckpointError, read_weights_file

# Prefixes of a complete detector: a checkpoint with any of them must fill the whole model.
_DETECTOR_PREFIXES = ("transformer.", "class_embed.", "bbox_embed.")
# Keys listed per kind of mismatch in an error message (a full list can be tens of thousands of characters).
_KEYS_SHOWN = 3


def _first_keys(keys):
    keys = sorted(keys)
    shown = ", ".join(keys[:_KEYS_SHOWN])
    return shown + (f", ... ({len(keys) - _KEYS_SHOWN} more)" if len(keys) > _KEYS_SHOWN else "")


def describe_mismatch(incompatible):
    """The missing / unexpected / wrongly shaped keys of ``incompatible`` as one short clause (counts and the first
    few keys), or "" when everything matched."""
    problems = []
    # fvcore drops a wrongly shaped weight before loading, so it is also "missing": counted once, as a mismatch
    wrong_shape = {key for key, _, _ in incompatible.incorrect_shapes}
    missing = [key for key in incompatible.missing_keys if key not in wrong_shape]
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first_keys(missing)})")
    if incompatible.unexpected_keys:
        problems.append(
            f"{len(incompatible.unexpected_keys)} unexpected keys ({_first_keys(incompatible.unexpected_keys)})"
        )
    if incompatible.incorrect_shapes:
        shapes = sorted(incompatible.incorrect_shapes)
        shown = ", ".join(f"{key}: {tuple(ckpt)} in the checkpoint, {tuple(model)} in the model"
                          for key, ckpt, model in shapes[:_KEYS_SHOWN])
        more = f", ... ({len(shapes) - _KEYS_SHOWN} more)" if len(shapes) > _KEYS_SHOWN else ""
        problems.append(f"{len(shapes)} shape mismatches ({shown}{more})")
    return ", ".join(problems)


def _check_state_dict(state_dict, source):
    """Raises CheckpointError unless ``state_dict`` maps names to tensors / numeric numpy arrays."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"cannot use checkpoint {source}: its weights are a {type(state_dict).__name__}, "
                              "not a dict of tensors")
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, (torch.Tensor, np.ndarray)):
            raise CheckpointError(f"cannot use checkpoint {source}: weight {key!r} is a {type(value).__name__}, "
                                  "not a tensor or array")


class FocusDETRCheckpointer(DetectionCheckpointer):
    """Loads our checkpoints, official detrex Focus-DETR ones (converted on the fly), detectron2 model-zoo ``.pkl``
    files, safetensors files and backbone-only weights, of any extension, without running code from the file
    (:func:`~focus_detr.checkpoint.safe_load.read_weights_file`).

    A checkpoint holding detector weights must match the model exactly: missing or unexpected keys raise a
    :class:`CheckpointError` naming the file, the counts and the first few keys, unless ``allow_partial=True``.
    Backbone-only checkpoints (ImageNet initialisation) load partially, as in detectron2.
    """

    def __init__(self, model, save_dir="", *, allow_partial: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_partial = allow_partial
        self._source = None  # the file being loaded, for error messages

    def load(self, path, *args, **kwargs):
        self._source = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            # detectron2 resets these only when loading succeeds; after a refused file the next load must work
            self._source = self._parsed_url_during_load = None

    def load_model_state(self, state_dict, source="the given state dict"):
        """Loads an in-memory state dict (ours or official) with the same conversion and checks as :meth:`load`;
        ``source`` names it in errors."""
        _check_state_dict(state_dict, source)
        self._source = source
        try:
            incompatible = self._load_model({"model": dict(state_dict)})
        finally:
            self._source = None
        self._log_incompatible_keys(incompatible)
        return incompatible

    def _load_file(self, filename):
        """detectron2's layouts (model-zoo / Caffe2 pickles, pycls ``.pyth``, torch files), read safely."""
        loaded = read_weights_file(filename)
        data = loaded.content
        if not isinstance(data, dict):
            raise CheckpointError(f"cannot use checkpoint {filename}: it holds a {type(data).__name__}, "
                                  "not a dict of weights")
        if loaded.format == "pickle":
            if "model" in data and "__author__" in data:  # detectron2 model zoo
                self.logger.info(f"Reading a file from '{data['__author__']}'")
            else:  # Caffe2 / Detectron model zoo: detection models keep their weights under "blobs"
                blobs = data.get("blobs", data)
                _check_state_dict(blobs, filename)
                weights = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
                data = {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}
        elif filename.endswith(".pyth"):  # pycls
            if "model_state" not in data:
                raise CheckpointError(f"cannot use checkpoint {filename}: a pycls .pyth file must hold 'model_state'")
            weights = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            data = {"model": weights, "__author__": "pycls", "matching_heuristics": True}
        else:
            if loaded.format == "safetensors" or "model" not in data:  # a safetensors file is one flat state dict
                data = {"model": data}
            queries = parse_qs(self._parsed_url_during_load.query) if self._parsed_url_during_load else {}
            if queries.pop("matching_heuristics", "False") == ["True"]:
                data["matching_heuristics"] = True
            if queries:
                raise CheckpointError(f"cannot use checkpoint {filename}: unsupported URL query {queries}")
        _check_state_dict(data["model"], filename)
        return data

    def _load_model(self, checkpoint):
        state_dict = checkpoint["model"]
        if is_official_layout(state_dict):
            self.logger.info("Checkpoint is in the official detrex Focus-DETR layout; converting its keys.")
            checkpoint["model"] = state_dict = convert_official_state_dict(state_dict)
        is_detector = any(k.startswith(_DETECTOR_PREFIXES) for k in state_dict)
        incompatible = super()._load_model(checkpoint)
        if is_detector and not self.allow_partial:
            mismatch = describe_mismatch(incompatible)
            if mismatch:
                raise CheckpointError(f"checkpoint {self._source} does not fit the model: {mismatch}")
        return incompatible
