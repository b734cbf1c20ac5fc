"""Command-line overrides of a LazyConfig, failing with one clear line for unknown keys, values of the wrong kind,
nulls and lines that do not parse; unregistered datasets. Loading config files: :mod:`.config_files`."""
import difflib
import inspect
import logging
from typing import Dict

from detectron2.config import LazyConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from .config_types import accepts_keyword, check_argument_types, is_number, located_target
from .detrex_names import detrex_hint
from .train_section import train_entry_problem

__all__ = [
    "ConfigError",
    "apply_overrides",
    "check_override_keys",
    "check_override_types",
    "check_datasets_registered",
    "flattened",
]


logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file, key or value that cannot be used (message names it)."""


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
            if target is not None and accepts_keyword(target, part):
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


def _is_entry(cfg, dotted_key):
    """Whether ``dotted_key`` is an entry written in ``cfg`` (not a constructor argument left at its default)."""
    parent_key, _, name = dotted_key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    return isinstance(parent, DictConfig) and name in parent


# what the commands read of a config: its sections, and of its dataloader the loaders and the evaluator
_READ_SECTIONS = ("model", "train", "dataloader", "optimizer", "lr_multiplier")
_READ_DATALOADER_ENTRIES = ("train", "test", "evaluator")


def _unread_new_entry(cfg, key):
    """``(config key, close matches)`` of the new top-level section or ``dataloader`` entry that setting ``key`` would
    add and that nothing reads (``+dataloader.tset.num_workers=0`` was accepted and ignored), or None."""
    parts = key.split(".")
    if parts[0] not in cfg and parts[0] not in _READ_SECTIONS:
        return parts[0], difflib.get_close_matches(parts[0], [str(name) for name in cfg.keys()], n=3)
    dataloader = cfg.get("dataloader", None) if parts[0] == "dataloader" else None
    if len(parts) > 1 and isinstance(dataloader, DictConfig) and "_target_" not in dataloader \
            and parts[1] not in dataloader and parts[1] not in _READ_DATALOADER_ENTRIES:
        close = difflib.get_close_matches(parts[1], [str(name) for name in dataloader.keys()], n=3)
        return f"dataloader.{parts[1]}", [f"dataloader.{name}" for name in close]
    return None


def _added_key_problem(cfg, key):
    """Why ``+key=value`` cannot add ``key``, or None. ``+`` adds an entry to a plain dict (a loss weight_dict, DDP
    arguments); an argument of a LazyCall node must be one its callable takes (``+model.foo=1`` reached the
    constructor: "unexpected keyword argument"), and an existing entry is set without ``+`` (as in Hydra)."""
    if _is_entry(cfg, key):
        return f"config override '+{key}=...' adds a key that exists already: set it with {key}=..."
    unread_entry = _unread_new_entry(cfg, key)
    if unread_entry is not None:
        close = f" (did you mean: {', '.join(unread_entry[1])}?)" if unread_entry[1] else ""
        return f"unknown config key {unread_entry[0]!r} in override '+{key}=...': nothing would read it{close}"
    unread = train_entry_problem(key) if key.startswith("train.") else None
    if unread is not None:
        return (f"unknown config key {unread[0]!r} in override '+{key}=...': the train section has no such setting: "
                f"nothing would read it{unread[1]}")
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if isinstance(parent, DictConfig) and "_target_" in parent:
        missing = _missing_part(cfg, key)
        if missing is not None:
            close = f" (did you mean: {', '.join(missing[1])}?)" if missing[1] else ""
            return (f"unknown config key {missing[0]!r} in override '+{key}=...': the part it sets takes no such "
                    f"argument{close}")
    return None


def check_override_keys(cfg, overrides):
    """Raises ConfigError naming the first ``key=value`` override whose key is not in ``cfg``; a ``+key=value``
    override adds a new key on purpose (:func:`_added_key_problem`), a ``~key`` deletion is refused (detectron2 does
    not apply them)."""
    for override in overrides:
        if override.strip().startswith("~"):
            raise ConfigError(f"config override {override!r} deletes a key, which detectron2's configs do not "
                              "support; set it to another value, or to null where null is a setting")
        if "=" not in override:
            raise ConfigError(f"config override {override!r} is not of the form key=value")
        key = override.split("=", 1)[0].strip()
        if key.startswith("+"):
            problem = _added_key_problem(cfg, key[1:])
            if problem:
                raise ConfigError(problem)
            continue
        missing = _missing_part(cfg, key)
        if missing is not None:
            missing_key, suggestions = missing
            hint = detrex_hint(key) or (f" (did you mean: {', '.join(suggestions)}?)" if suggestions else "")
            parent = OmegaConf.select(cfg, missing_key.rpartition(".")[0], default=None)
            unread = train_entry_problem(key) if key.startswith("train.") else None
            if unread is not None:  # adding it with + would be ignored
                missing_key, hint = unread[0], unread[1] or hint
            elif not hint and isinstance(parent, DictConfig) and "_target_" not in parent \
                    and _unread_new_entry(cfg, key) is None:
                hint = f" (a new entry of a plain dict is added with +{key}={override.split('=', 1)[1].strip()})"
            raise ConfigError(f"unknown config key {missing_key!r} in override {override!r}{hint}")


_UNSET = object()


def _current_value(cfg, dotted_key):
    """The value ``dotted_key`` has in ``cfg``: the entry, or the default of the LazyCall target's argument it names;
    ``_UNSET`` when unknown (no entry, no default)."""
    parent_key, _, name = dotted_key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if isinstance(parent, (DictConfig, ListConfig)) and (isinstance(parent, ListConfig) or name in parent):
        value = OmegaConf.select(cfg, dotted_key, default=_UNSET)
        # a copy: applying the overrides changes the config's nodes in place
        return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
    if isinstance(parent, DictConfig):
        target = parent.get("_target_", None) if "_target_" in parent else None
        if target is not None:
            return _signature_default(target, name)
    return _UNSET


def _signature_default(target, name):
    target = located_target(target)
    if target is None:
        return _UNSET
    try:
        parameter = inspect.signature(target).parameters.get(name)
    except (TypeError, ValueError):
        return _UNSET
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return _UNSET
    return parameter.default


def _expected_kind(value):
    """What a replacement of ``value`` must be, as (description, check), or None when anything may replace it."""
    if isinstance(value, bool):
        return "True or False", lambda new: isinstance(new, bool)
    if isinstance(value, int):
        return "an integer", lambda new: isinstance(new, int) and not isinstance(new, bool)
    if isinstance(value, float):
        return "a number", is_number
    if isinstance(value, (list, tuple, ListConfig)) and len(value) and all(is_number(v) for v in value):
        return "a list of numbers", lambda new: isinstance(new, (list, tuple, ListConfig)) and all(is_number(v) for v in new)
    if isinstance(value, (dict, DictConfig)):  # a section (model, optimizer, ...): its entries are set one by one
        return "a section (set its entries, KEY.name=value, or drop it: KEY=null)", \
            lambda new: isinstance(new, (dict, DictConfig))
    return None


def check_override_types(old_values, cfg, overrides):
    """Raises ConfigError naming key and value of the first override whose value is not of the kind the entry holds
    (a number, an integer, True/False, a list of numbers, a section); ``None`` is always accepted.

    Args:
        old_values (dict): key -> value before the overrides (``_current_value``).
        cfg: the config after the overrides.
    """
    # a key given twice holds its last value: that is the one to check and to quote
    last_text = dict(tuple(part.strip() for part in override.split("=", 1)) for override in overrides)
    for key, text in last_text.items():
        if key.startswith(("+", "~")) or old_values.get(key, _UNSET) is _UNSET:
            continue
        expected = _expected_kind(old_values[key])
        new = OmegaConf.select(cfg, key, default=None)
        if expected is not None and new is not None and not expected[1](new):
            now = "a section" if isinstance(old_values[key], dict) else repr(old_values[key])
            raise ConfigError(f"wrong value for config key {key!r}: {text!r} is not {expected[0]} (it is {now} now)")


def _flat(text):
    return " ".join(str(text).split())


def _override_list(overrides):
    """``overrides`` as a list of ``key=value`` strings. A single string is refused rather than split: iterated, it
    would be taken character by character (``'t' is not of the form key=value``), and a space inside a value
    makes splitting it ambiguous."""
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(f'overrides must be a list of "key=value" strings, got the string {overrides!r}; '
                          f"write [{overrides!r}]")
    try:
        items = list(overrides or ())
    except TypeError:
        raise ConfigError(f'overrides must be a list of "key=value" strings, got {overrides!r}') from None
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f'overrides must be a list of "key=value" strings, got {item!r} in it')
    return items


def _override_error(overrides, error):
    """The one line for ``error`` from applying ``overrides``: it names the override that cannot be parsed, where
    hydra's message quoted the whole list and pointed at a column on a second line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except Exception as parse_error:
            spaced = override != override.strip() or " =" in override or "= " in override
            key, _, value = override.partition("=")
            hint = "; write key=value without spaces around it" if spaced else ""
            if not hint and "=" in value and not value.strip().startswith(("'", '"')):
                hint = f"; a value holding '=' goes in quotes, inside the shell's: '{key.strip()}=\"{value.strip()}\"'"
            elif not hint and not value.isascii() and not value.strip().startswith(("'", '"')):
                # the override grammar takes only ASCII outside quotes: a path with an accented letter
                hint = (f"; a value with characters beyond ASCII goes in quotes, inside the shell's: "
                        f"'{key.strip()}=\"{value.strip()}\"'")
            return f"cannot read config override {override!r}: {_flat(str(parse_error).splitlines()[0])}{hint}"
    return f"cannot apply overrides {overrides}: {_flat(error)}"


_TIED_OUTPUT = "dataloader.evaluator.output_dir"


def _copies_train_output_dir(cfg) -> bool:
    """Whether ``dataloader.evaluator.output_dir`` holds a copy of ``train.output_dir``'s value, as detrex's configs
    write it (``dataloader.evaluator.output_dir = train.output_dir``), rather than a reference to it."""
    train, evaluator = cfg.get("train", None), (cfg.get("dataloader", None) or {}).get("evaluator", None)
    if not isinstance(train, DictConfig) or not isinstance(evaluator, DictConfig):
        return False
    if "output_dir" not in train or "output_dir" not in evaluator:
        return False
    if OmegaConf.is_interpolation(evaluator, "output_dir"):  # a reference (our configs): it follows by itself
        return False
    value = evaluator._get_node("output_dir")._value()
    return isinstance(value, str) and value != "" and value == train._get_node("output_dir")._value()


def _keep_evaluator_output_tied(cfg, overrides):
    """After an override of ``train.output_dir`` alone, a copied evaluator folder (:func:`_copies_train_output_dir`)
    follows it: the evaluation's results went into the config's folder (another run's, perhaps) without a word."""
    keys = {override.split("=", 1)[0].strip().lstrip("+") for override in overrides}
    if "train.output_dir" in keys and _TIED_OUTPUT not in keys:
        cfg.dataloader.evaluator.output_dir = "${...train.output_dir}"
        # a warning: the config's logging is not set up yet, and where the results go is worth the line
        logger.warning(f"{_TIED_OUTPUT} held a copy of train.output_dir (detrex's configs copy it): it follows the "
                       f"override to {cfg.train.output_dir}")


def apply_overrides(cfg, overrides=()):
    """``key=value`` overrides (a list of strings) applied to ``cfg`` (in place; returned), each key and value type
    checked first. An evaluator folder copied from ``train.output_dir`` follows an override of it. Raises
    ConfigError with a one-line message."""
    overrides = _override_list(overrides)
    for override in overrides:
        key, value = (part.strip() for part in override.partition("=")[::2])  # no "=": check_override_keys says so
        if value == "None":  # Python's None, which the override syntax reads as text (an output folder named None)
            raise ConfigError(f"{override} sets the text 'None', not nothing: write {key}=null for no value (or "
                              f"{key}=./None for a path named None)")
    check_override_keys(cfg, overrides)
    old_values = {o.split("=", 1)[0].strip(): _current_value(cfg, o.split("=", 1)[0].strip()) for o in overrides}
    tied_output = _copies_train_output_dir(cfg)
    try:
        cfg = LazyConfig.apply_overrides(cfg, overrides)
    except Exception as error:
        raise ConfigError(_override_error(overrides, error)) from None
    check_override_types(old_values, cfg, overrides)
    if tied_output:
        _keep_evaluator_output_tied(cfg, overrides)
    check_argument_types(cfg)
    return cfg


def flattened(node, prefix: str = "") -> Dict:
    """A config as plain nested dicts (a saved ``config.yaml``, ``OmegaConf.to_container``) -> one level of dotted
    keys, lists kept as values: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat = {}
    for key, child in node.items():
        flat.update(flattened(child, f"{prefix}.{key}" if prefix else str(key)))
    return flat


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


def check_datasets_registered(cfg_node, started_process=False):
    """Raises ConfigError naming the first dataset the config uses that is not in detectron2's DatasetCatalog; in a
    ``started_process`` of a multi-process run, saying where such processes register datasets."""
    from detectron2.data import DatasetCatalog

    registered = DatasetCatalog.list()
    for name in _dataset_names_in(cfg_node):
        if name not in registered and started_process:  # the launching process had it: its script registered it
            raise ConfigError(
                f"dataset {name!r} is not registered in the processes that --num-gpus / --num-machines start: they "
                "run the config file but not a script's `if __name__ == \"__main__\":` block; register it in the "
                "config file (docs/data.md)")
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=3)
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise ConfigError(
                f"dataset {name!r} is not registered{hint}; a config registers its own data (the tree sets: "
                "configs/common/data/trees.py, i.e. focus_detr.data.register_trees()), COCO names need "
                "DETECTRON2_DATASETS pointing at the COCO folder, and a run's saved config.yaml registers only the "
                "tree sets (give its .py config, or a .py config that registers the data and loads the yaml)"
            )
