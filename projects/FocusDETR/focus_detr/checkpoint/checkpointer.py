"""A DetectionCheckpointer that reads weights without running code from them, also reads official detrex
Focus-DETR checkpoints, and refuses partial loads of detector weights."""
import json
import os
import re
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

from .official import is_official_layout, to_model_keys
from .safe_load import CheckpointError, checked_checkpoint_path, missing_checkpoint_error, read_weights_file
from .torchvision_resnet import is_torchvision_resnet, torchvision_resnet_to_backbone

# Prefixes of a complete detector: a checkpoint with any of them must fill the whole model.
_DETECTOR_PREFIXES = ("transformer.", "class_embed.", "bbox_embed.")
# The tensors with one row per class (the class heads, the denoising's label embedding): all that differs between a
# detector and the same one for another set of classes.
_CLASS_DEPENDENT_PREFIXES = ("class_embed.", "label_enc.")
# Keys listed per kind of mismatch in an error message (a full list can be tens of thousands of characters).
_KEYS_SHOWN = 3
# The entry of a training checkpoint holding its training set's class names, in the order of the model's outputs
# (detectron2's metadata name for them); in a safetensors file's __metadata__, the same list as JSON text (the map
# holds strings only).
CLASSES_KEY = "thing_classes"


# The first keys of each backbone family's weights (detectron2's ResNet and SwinTransformer), to name a checkpoint
# of one family loaded into a model of the other.
_BACKBONE_FAMILIES = (("a ResNet", ("backbone.stem.", "backbone.res")),
                      ("a Swin Transformer", ("backbone.patch_embed.", "backbone.layers.")))


# detectron2's SwinTransformer normalises each output with a LayerNorm of its own, which ImageNet weights lack
_SWIN_OUTPUT_NORM = re.compile(r"^backbone\.norm\d+\.(weight|bias)$")


def _backbone_family(keys):
    for family, prefixes in _BACKBONE_FAMILIES:
        if any(key.startswith(prefixes) for key in keys):
            return family
    return None


def _classes(count):
    return f"{count} class" + ("" if count == 1 else "es")


def _recorded_names(checkpoint, count, most=10):
    """" ('tree', 'shrub')": the ``count`` class names a training checkpoint records (its ``thing_classes``, see
    focus_detr.engine.checkpoint_classes), to name the classes of another count; "" when it records none."""
    names = checkpoint.get(CLASSES_KEY)
    if not isinstance(names, (list, tuple)) or len(names) != count or not all(isinstance(n, str) for n in names):
        return ""
    more = f", ... ({count - most} more)" if count > most else ""
    return f" ({', '.join(repr(name) for name in names[:most])}{more})"


def _safetensors_entries(metadata, filename):
    """The checkpoint entries a safetensors file's header ``metadata`` (str -> str) records beside its weights: its
    class names (:data:`CLASSES_KEY`, decoded from JSON; focus_detr.engine.checkpoint_classes checks that they are
    a list of names), or none. CheckpointError (one line) when the value is not JSON."""
    text = (metadata or {}).get(CLASSES_KEY)
    if text is None:
        return {}
    try:
        return {CLASSES_KEY: json.loads(text)}
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"cannot use checkpoint {filename}: its safetensors __metadata__ entry {CLASSES_KEY} is "
                              f"not JSON ({type(error).__name__}: {str(error)[:80]}), where it holds the class names "
                              "as a JSON list of strings") from None


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


def check_weights_path(path):
    """``path`` as :meth:`FocusDETRCheckpointer.load` takes it (str or os.PathLike, a URL, None or "" for nothing),
    as a str; a local file that is missing or no regular file is a one-line error
    (:func:`~focus_detr.checkpoint.safe_load.missing_checkpoint_error`), a path of another type a one-line
    TypeError. For callers that must know before they start (``train_net.py`` before its set-up writes)."""
    path = checked_checkpoint_path(path, allow_empty=True)
    if path and "://" not in path:
        local = urlparse(path)._replace(query="").geturl()  # as detectron2 reads it: "?matching_heuristics=True"
        if not os.path.isfile(local):
            raise missing_checkpoint_error(local)
    return path


def _prefix_hint(keys, model_keys):
    """" (every key starts with 'P', which the model's keys do not have)" when removing a prefix common to all
    ``keys`` (a training framework's wrapper name, e.g. ``model.``) makes some of them the model's; else ""."""
    prefix = next(iter(keys)).split(".", 1)[0] + "."
    if not all(key.startswith(prefix) for key in keys) or not {key[len(prefix):] for key in keys} & set(model_keys):
        return ""
    return f" (every key starts with '{prefix}', which the model's keys do not have)"


def _missing_prefix_hint(state_dict, model_state, source):
    """" (the model has them under 'P': ...)" when putting a prefix of the model's keys (``backbone.``) before the
    keys of ``state_dict`` makes some of them the model's with the model's shape, naming detectron2's option that
    matches such a file (``source``); a file whose tensors have other shapes is said to be of another size (with the
    option, it would fill nothing and be refused); else ""."""
    for prefix in sorted({key.split(".", 1)[0] + "." for key in model_state}):
        named = [key for key in state_dict if prefix + key in model_state]
        if not named:
            continue
        if any(tuple(state_dict[key].shape) == tuple(model_state[prefix + key].shape) for key in named):
            return (f" (the model has them under '{prefix}': detectron2's matching heuristics load such a file, "
                    f"on the command line 'train.init_checkpoint=\"{source}?matching_heuristics=True\"')")
        return (f" (the model has them under '{prefix}', but none of them with the model's shape: a file for another "
                f"{prefix[:-1]}, or another size of it)")
    return ""


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
    files, torchvision's ResNet weights, safetensors files and backbone-only weights, of any extension, without
    running code from the file (:func:`~focus_detr.checkpoint.safe_load.read_weights_file`).

    A checkpoint holding detector weights must match the model exactly: missing or unexpected keys raise a
    :class:`CheckpointError` naming the file, the counts and the first few keys, unless ``allow_partial=True``.
    Backbone-only checkpoints (ImageNet initialisation) load partially, as in detectron2, unless
    ``require_detector=True`` (inference: a model whose detector parts stay random gives random detections). A file
    that fills none of the model's weights (unrelated or wrongly prefixed keys, an empty dict) is always refused:
    detectron2 would only log the key lists and go on with random weights.

    With ``other_class_count=True`` (the initial weights of a training, fine-tuned on another set of classes), a
    detector checkpoint trained for another number of classes loads all but its class-dependent tensors, which keep
    the model's initialisation, with one warning; any other mismatch is still refused.
    """

    def __init__(self, model, save_dir="", *, allow_partial: bool = False, require_detector: bool = False,
                 other_class_count: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_partial = allow_partial
        self.require_detector = require_detector
        self.other_class_count = other_class_count
        self._source = None  # the file being loaded, for error messages

    def load(self, path, *args, **kwargs):
        """detectron2's ``load``: ``path`` a weights file (str or os.PathLike) or URL; None or "" loads nothing. A
        local file that is missing or no regular file is a one-line error (:func:`missing_checkpoint_error`), not
        detectron2's assertion; a path of another type a one-line TypeError."""
        path = check_weights_path(path)
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

    def _log_incompatible_keys(self, incompatible):
        """detectron2's per-key warnings, less those of the class-dependent tensors that a load for another class
        count left out (:meth:`_load_model` named them in one line)."""
        if self.other_class_count and self._other_class_count(incompatible) is not None:
            left_out = {key for key, _, _ in incompatible.incorrect_shapes}
            incompatible = incompatible._replace(
                missing_keys=[key for key in incompatible.missing_keys if key not in left_out], incorrect_shapes=[])
        super()._log_incompatible_keys(incompatible)

    def _warn_of_caffe2_inputs(self, filename):
        """Caffe2's (detectron2's MSRA) ImageNet weights were trained on BGR images with pixel_std 1; a model that
        normalises its inputs as torchvision does (this project's default) starts fine-tuning from features that do
        not fit them, which nothing else would say."""
        pixel_std = getattr(self.model, "pixel_std", None)  # fvcore's checkpointer holds the model unwrapped
        if pixel_std is None or bool((pixel_std.flatten() < 2).all()):
            return
        shown = ", ".join(f"{value:g}" for value in pixel_std.flatten().tolist())
        self.logger.warning(
            f"checkpoint {filename} is in Caffe2's layout (detectron2's MSRA ImageNet weights), trained on BGR images "
            f"with pixel_std 1, but the model normalises with pixel_std ({shown}) as torchvision's weights expect: use "
            "torchvision's weights (detectron2's ImageNetPretrained/torchvision/R-50.pkl), or set model.pixel_mean, "
            "model.pixel_std and the mappers' img_format as detectron2's MSRA configs do")

    def _model_classes(self):
        return getattr(self.model, "num_classes", None)

    def _other_class_count(self, incompatible):
        """The checkpoint's class count when the only mismatch of ``incompatible`` is that count: every wrongly shaped
        tensor is a class-dependent one (:data:`_CLASS_DEPENDENT_PREFIXES`) and differs from the model's in its first
        dimension alone, which is the model's ``num_classes`` there and one and the same other count in the
        checkpoint; else None."""
        wrong_shape = {key for key, _, _ in incompatible.incorrect_shapes}
        model_classes = self._model_classes()
        if (not wrong_shape or incompatible.unexpected_keys or not isinstance(model_classes, int)
                or any(key not in wrong_shape for key in incompatible.missing_keys)):
            return None
        counts = set()
        for key, in_checkpoint, in_model in incompatible.incorrect_shapes:
            if (not key.startswith(_CLASS_DEPENDENT_PREFIXES) or len(in_checkpoint) != len(in_model)
                    or tuple(in_checkpoint[1:]) != tuple(in_model[1:]) or in_model[0] != model_classes):
                return None
            counts.add(in_checkpoint[0])
        return counts.pop() if len(counts) == 1 else None

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
                self._warn_of_caffe2_inputs(filename)
        elif filename.endswith(".pyth"):  # pycls
            if "model_state" not in data:
                raise CheckpointError(f"cannot use checkpoint {filename}: a pycls .pyth file must hold 'model_state'")
            weights = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            data = {"model": weights, "__author__": "pycls", "matching_heuristics": True}
        else:
            if loaded.format == "safetensors":  # one flat state dict; what else it records is in its header
                data = {"model": data, **_safetensors_entries(loaded.metadata, filename)}
            elif "model" not in data:
                data = {"model": data}
            queries = parse_qs(self._parsed_url_during_load.query) if self._parsed_url_during_load else {}
            if queries.pop("matching_heuristics", "False") == ["True"]:
                data["matching_heuristics"] = True
            if queries:
                raise CheckpointError(f"cannot use checkpoint {filename}: unsupported URL query {queries}")
        _check_state_dict(data["model"], filename)
        return data

    def _load_model(self, checkpoint):
        if is_official_layout(checkpoint["model"]):
            self.logger.info("Checkpoint is in the official detrex Focus-DETR layout; converting its keys.")
        checkpoint["model"] = state_dict = to_model_keys(checkpoint["model"])
        if is_torchvision_resnet(state_dict):
            self.logger.info("Checkpoint is torchvision's ResNet; converting its keys to the backbone's (its "
                             "classifier, fc.*, is not used).")
            checkpoint["model"] = state_dict = torchvision_resnet_to_backbone(state_dict)
        if not state_dict:
            raise CheckpointError(f"checkpoint {self._source} holds no weights")
        # the names as the model sees them (fvcore drops a "module." every key has, e.g. a DDP model's)
        names = {key[len("module."):] if key.startswith("module.") else key for key in state_dict}
        is_detector = any(name.startswith(_DETECTOR_PREFIXES) for name in names)
        model_state = self.model.state_dict()
        model_keys = list(model_state)
        if checkpoint.get("matching_heuristics", False) and not is_detector:
            checkpoint["model"] = self._backbone_weights_by_heuristics(checkpoint, model_state)
            checkpoint["matching_heuristics"] = False  # its keys are the model's now
            names = set(checkpoint["model"])
        if not is_detector and self.require_detector:
            raise CheckpointError(
                f"checkpoint {self._source} holds no Focus-DETR detector weights: none of its {len(state_dict)} keys "
                f"({_first_keys(state_dict)}) starts with {', '.join(_DETECTOR_PREFIXES)}"
                f"{_prefix_hint(state_dict, model_keys)}; inference needs a trained detector's checkpoint (a backbone "
                "initialisation is for training)"
            )
        matched_by_heuristics = checkpoint.get("matching_heuristics", False)
        incompatible = super()._load_model(checkpoint)
        if is_detector and not self.allow_partial:
            mismatch = describe_mismatch(incompatible)
            checkpoint_classes = self._other_class_count(incompatible)
            if checkpoint_classes is not None and not self.other_class_count:
                # an evaluation or a resume: the tensor list said only "9 shape mismatches (class_embed.0.bias ...)"
                raise CheckpointError(
                    f"checkpoint {self._source} was trained for {_classes(checkpoint_classes)}"
                    f"{_recorded_names(checkpoint, checkpoint_classes)} and the model has "
                    f"{_classes(self._model_classes())} (model.num_classes): use it with the config it was trained "
                    f"with (model.num_classes={checkpoint_classes} and datasets of its classes); to train it on "
                    "these classes, start a new run from it (train.init_checkpoint)")
            if checkpoint_classes is not None:
                keys = sorted(key for key, _, _ in incompatible.incorrect_shapes)
                self.logger.warning(
                    f"checkpoint {self._source} was trained for {_classes(checkpoint_classes)}"
                    f"{_recorded_names(checkpoint, checkpoint_classes)} and the model has "
                    f"{_classes(self._model_classes())}: its {len(keys)} class-dependent tensors ({_first_keys(keys)}) "
                    "keep the model's initialisation, all its other weights are loaded (fine-tuning on another set of "
                    "classes)")
            elif mismatch:
                # a size the config sets (num_queries, num_classes, a width, a layer count) other than in training:
                # the tensor names alone did not say which setting to look at
                hint = ("; the config builds the model with other sizes than the checkpoint's (compare its "
                        "num_queries, num_classes, widths and layer counts with the training run's config.yaml)"
                        if incompatible.incorrect_shapes else "")
                theirs, ours = _backbone_family(names), _backbone_family(model_keys)
                if theirs and ours and theirs != ours:
                    hint = (f"; its backbone is {theirs} and the config builds {ours}: use the config of the "
                            "checkpoint's model")
                raise CheckpointError(f"checkpoint {self._source} does not fit the model: {mismatch}{hint}")
        wrong_shape = {key for key, _, _ in incompatible.incorrect_shapes}
        if not matched_by_heuristics and not (names & set(model_keys)) - wrong_shape:
            raise CheckpointError(
                f"checkpoint {self._source} fills none of the model's weights: its {len(state_dict)} keys "
                f"({_first_keys(state_dict)}) name none of the model's ({_first_keys(model_keys)})"
                f"{_prefix_hint(state_dict, model_keys) or _missing_prefix_hint(state_dict, model_state, self._source)}"
            )
        if not is_detector:
            self._name_unfilled_backbone(incompatible)
        return incompatible

    def _backbone_weights_by_heuristics(self, checkpoint, model_state):
        """The backbone initialisation ``checkpoint`` (detectron2's model-zoo, Caffe2 and pycls files, a file given
        with ``?matching_heuristics=True``) under the model's keys, by detectron2's name-matching heuristics, matched
        against the backbone only: matched by the end of their names, a Swin file's last ``norm.*`` also named the
        neck's norms (an error where two have its shape). CheckpointError when they match nothing of the backbone:
        detectron2 only warned, and training went on from random weights."""
        state_dict = checkpoint["model"]
        self._convert_ndarray_to_tensor(state_dict)
        # a model without a backbone (the checkpointer of another module): all of it, as detectron2 matches
        targets = {key: value for key, value in model_state.items() if key.startswith("backbone.")} or model_state
        aligned = align_and_update_state_dicts(targets, state_dict,
                                               c2_conversion=checkpoint.get("__author__", None) == "Caffe2")
        aligned = {key: value for key, value in aligned.items() if key in targets}  # none matched: its own keys
        if not aligned:
            what = "a backbone weight" if targets is not model_state else "a weight of the model"
            raise CheckpointError(
                f"checkpoint {self._source} fills none of the model's weights: detectron2's matching heuristics match "
                f"none of its {len(state_dict)} keys ({_first_keys(state_dict)}) to {what} of the same name ending "
                "and shape (a file for another backbone, or another size of it?)")
        return aligned

    def _name_unfilled_backbone(self, incompatible):
        """One warning when backbone initial weights leave some of the backbone's parameters at their random
        initialisation (a file for another depth, or cut short): detectron2 lists every missing key among those of
        the rest of the model, which stays random by design. Buffers (frozen norm statistics, index tables) are not
        counted: they are not random."""
        backbone = [name for name, _ in self.model.named_parameters() if name.startswith("backbone.")]
        unfilled = sorted(set(incompatible.missing_keys) & set(backbone))
        if unfilled and all(_SWIN_OUTPUT_NORM.match(name) for name in unfilled):
            self.logger.info(f"The backbone's output norms ({_first_keys(unfilled)}), which ImageNet weights do not "
                             "have, start from ones and zeros")
        elif backbone and unfilled:
            self.logger.warning(
                f"checkpoint {self._source} fills {len(backbone) - len(unfilled)} of the backbone's {len(backbone)} "
                f"parameters: the other {len(unfilled)} ({_first_keys(unfilled)}) keep the model's initialisation")
