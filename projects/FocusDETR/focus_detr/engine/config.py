"""Loading LazyConfig files with command-line overrides, failing with one clear line for unknown keys, missing files
and unregistered datasets."""
import difflib
import inspect
import os

import torch
from detectron2.config import LazyConfig
from omegaconf import DictConfig, ListConfig

__all__ = [
    "ConfigError",
    "load_config",
    "check_override_keys",
    "check_datasets_registered",
    "resolve_device",
]


class ConfigError(ValueError):
    """A config file, key or value that cannot be used (message names it)."""


def _accepts_keyword(target, name):
    if isinstance(target, str):
        from hydra.utils import get_method

        try:
            target = get_method(target)
        except Exception:
            return True  # cannot tell: let instantiation decide
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return True
    for parameter in signature.parameters.values():
        if parameter.kind == inspect.Parameter.VAR_KEYWORD or parameter.name == name:
            return True
    return False


def _missing_part(cfg, dotted_key):
    """None when ``dotted_key`` names an existing entry (or an argument the LazyCall target accepts);
    otherwise (the first missing part's full key, close matches)."""
    node = cfg
    parts = dotted_key.split(".")
    for index, part in enumerate(parts):
        prefix = ".".join(parts[: index + 1])
        if isinstance(node, DictConfig):
            if part in node:
                child = node._get_node(part)
                node = child if isinstance(child, (DictConfig, ListConfig)) else None
                if node is None and index < len(parts) - 1:
                    return prefix + "." + parts[index + 1], []
                continue
            target = node.get("_target_", None) if "_target_" in node else None
            if target is not None and _accepts_keyword(target, part):
                return None  # a constructor argument left at its default
            parent = ".".join(parts[:index])
            close = difflib.get_close_matches(part, [str(k) for k in node.keys()], n=3)
            return prefix, [f"{parent}.{match}" if parent else match for match in close]
        if isinstance(node, ListConfig):
            if part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
                child = node._get_node(int(part))
                node = child if isinstance(child, (DictConfig, ListConfig)) else None
                continue
            return prefix, []
        return prefix, []
    return None


def check_override_keys(cfg, overrides):
    """Raises ConfigError naming the first ``key=value`` override whose key is not in ``cfg`` (a ``+key=value``
    override adds a new key on purpose and is not checked)."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"config override {override!r} is not of the form key=value")
        key = override.split("=", 1)[0].strip()
        if key.startswith("+") or key.startswith("~"):
            continue
        missing = _missing_part(cfg, key)
        if missing is not None:
            missing_key, suggestions = missing
            hint = f" (did you mean: {', '.join(suggestions)}?)" if suggestions else ""
            raise ConfigError(f"unknown config key {missing_key!r} in override {override!r}{hint}")


def load_config(config_file, overrides=()):
    """LazyConfig.load + checked overrides. Raises FileNotFoundError / ConfigError with one-line messages."""
    if not config_file:
        raise ConfigError("no config file given (--config-file)")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file not found: {config_file}")
    cfg = LazyConfig.load(config_file)
    overrides = list(overrides or [])
    check_override_keys(cfg, overrides)
    try:
        cfg = LazyConfig.apply_overrides(cfg, overrides)
    except Exception as error:
        raise ConfigError(f"cannot apply overrides {overrides}: {error}") from None
    return cfg


def _dataset_names_in(node):
    """Dataset names referenced by ``get_detection_dataset_dicts(names=...)`` calls anywhere in a config subtree."""
    names = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = node._get_node(key)
            if key == "names" and not isinstance(child, DictConfig):
                value = node[key]
                names.extend([value] if isinstance(value, str) else list(value))
            elif key == "dataset_name":
                value = node[key]
                if isinstance(value, str):
                    names.append(value)
            elif isinstance(child, (DictConfig, ListConfig)):
                names.extend(_dataset_names_in(child))
    elif isinstance(node, ListConfig):
        for child in node:
            names.extend(_dataset_names_in(child))
    return names


def check_datasets_registered(cfg_node):
    """Raises ConfigError naming the first dataset the config uses that is not in detectron2's DatasetCatalog."""
    from detectron2.data import DatasetCatalog

    registered = DatasetCatalog.list()
    for name in _dataset_names_in(cfg_node):
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=3)
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise ConfigError(
                f"dataset {name!r} is not registered{hint}; the tree data registers on 'import focus_detr.data', "
                "COCO names need DETECTRON2_DATASETS pointing at the COCO folder"
            )


def resolve_device(device):
    """``"auto"``/None -> "cuda" when a GPU is visible else "cpu"; other strings are checked to be usable."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"train.device {device!r} is not a torch device") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {device!r} but no CUDA GPU is visible; use train.device=cpu")
    return str(parsed)
