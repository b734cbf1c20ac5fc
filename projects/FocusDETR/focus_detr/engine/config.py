"""Loading LazyConfig files with command-line overrides, failing with one clear line for unknown keys, missing files,
config files that do not parse or that raise while they run, and unregistered datasets."""
import difflib
import inspect
import os
import re
from typing import Dict

import yaml
from detectron2.config import LazyConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from .config_types import check_argument_types, is_number, located_target

__all__ = [
    "ConfigError",
    "apply_overrides",
    "load_config",
    "load_config_for_tool",
    "check_override_keys",
    "check_override_types",
    "check_datasets_registered",
    "flattened",
]


class ConfigError(ValueError):
    """A config file, key or value that cannot be used (message names it)."""


def _accepts_keyword(target, name):
    target = located_target(target)
    if target is None:
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


def _is_entry(cfg, dotted_key):
    """Whether ``dotted_key`` is an entry written in ``cfg`` (not a constructor argument left at its default)."""
    parent_key, _, name = dotted_key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    return isinstance(parent, DictConfig) and name in parent


def _added_key_problem(cfg, key):
    """Why ``+key=value`` cannot add ``key``, or None. ``+`` adds an entry to a plain dict (a loss weight_dict, DDP
    arguments); an argument of a LazyCall node must be one its callable takes (``+model.foo=1`` reached the
    constructor: "unexpected keyword argument"), and an existing entry is set without ``+`` (as in Hydra)."""
    if _is_entry(cfg, key):
        return f"config override '+{key}=...' adds a key that exists already: set it with {key}=..."
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
            hint = f" (did you mean: {', '.join(suggestions)}?)" if suggestions else ""
            parent = OmegaConf.select(cfg, missing_key.rpartition(".")[0], default=None)
            if not suggestions and isinstance(parent, DictConfig) and "_target_" not in parent:
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


# detectron2 runs every config file (the one named and those it imports) in a package named like this, and re-raises
# a syntax error of any of them as "Config file <path> has syntax error!" from the parser's error.
_CONFIG_PACKAGE_PREFIX = "detectron2._cfg_loader"
_DETECTRON2_SYNTAX_ERROR = re.compile(r"^Config file (.+) has syntax error!$")
_CONFIG_EXTENSIONS = (".py", ".yaml", ".yml")


def _flat(text):
    return " ".join(str(text).split())


def _syntax_error_message(config_file, error):
    """``config file F: invalid syntax at line N (why): <the line>`` for a SyntaxError from loading ``config_file``
    (F: the file that does not parse, which may be one the config imports)."""
    failing_file, parse_error = config_file, error
    cause = error
    while cause is not None:  # detectron2's "has syntax error!" wrapper, then the parser's error
        if isinstance(cause, SyntaxError):
            named = _DETECTRON2_SYNTAX_ERROR.match(str(cause.msg or ""))
            if not named:
                parse_error = cause
                if cause.filename and not cause.filename.startswith("<"):  # "<unknown>": parsed from a string
                    failing_file = cause.filename
                break
            failing_file = named.group(1)
        cause = cause.__cause__ or cause.__context__
    where = f" at line {parse_error.lineno}" if parse_error.lineno else ""
    why = "" if _DETECTRON2_SYNTAX_ERROR.match(str(parse_error.msg or "")) else f" ({_flat(parse_error.msg)})"
    text = f": {parse_error.text.strip()}" if parse_error.text and parse_error.text.strip() else ""
    return f"config file {failing_file}: invalid syntax{where}{why}{text}"


def _yaml_error_message(config_file, error):
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return f"config file {config_file}: invalid YAML ({_flat(error)})"
    try:
        with open(config_file, errors="replace") as f:
            text = f.read().splitlines()[mark.line].strip()
    except (OSError, IndexError):
        text = ""
    problem = _flat(getattr(error, "problem", None) or error)
    text = f": {text}" if text else ""
    return f"config file {config_file}: invalid YAML at line {mark.line + 1} ({problem}){text}"


def _config_frame(traceback):
    """(file, line) of the innermost frame of ``traceback`` that runs a config file's code (the file named on the
    command line or one it imports / loads), or None."""
    found = None
    while traceback is not None:
        frame = traceback.tb_frame
        if str(frame.f_globals.get("__package__") or "").startswith(_CONFIG_PACKAGE_PREFIX):
            found = frame.f_code.co_filename, traceback.tb_lineno
        traceback = traceback.tb_next
    return found


def _load_lazy_config(config_file):
    """``LazyConfig.load`` with one-line ConfigErrors naming the file and line for a config that does not parse or
    that raises while it runs (a NameError, a failed import, anything): the innermost config file in the traceback,
    which may be one the named config imports."""
    if not config_file.endswith(_CONFIG_EXTENSIONS):
        raise ConfigError(f"config file {config_file} is neither a LazyConfig .py file nor a .yaml file")
    try:
        return LazyConfig.load(config_file)
    except SyntaxError as error:
        raise ConfigError(_syntax_error_message(config_file, error)) from error
    except Exception as error:
        frame = _config_frame(error.__traceback__)
        if frame is not None:
            failing_file, line = frame
            raise ConfigError(f"config file {failing_file}: {type(error).__name__} at line {line}: {_flat(error)}"
                              ) from error
        # raised before any config code ran: reading or parsing the file
        if isinstance(error, yaml.YAMLError):
            raise ConfigError(_yaml_error_message(config_file, error)) from error
        if isinstance(error, UnicodeDecodeError):
            raise ConfigError(f"config file {config_file} is not a text file ({error.reason} at byte {error.start})"
                              ) from error
        raise  # e.g. an OSError reading it: its own one-line message


_EXAMPLE_CONFIG = "configs/focus_detr_r18_trees.py"


def load_config(config_file, overrides=()):
    """LazyConfig.load + checked overrides. Raises FileNotFoundError / ConfigError with one-line messages, also for a
    file that is not a mapping with a ``model`` (what every command builds; the sections a task needs beyond it are
    checked where it starts: ``settings.require_sections``)."""
    if not config_file:
        raise ConfigError("no config file given (--config-file)")
    if os.path.isdir(config_file):
        raise ConfigError(f"config file {config_file} is a folder; name one of its files (e.g. {_EXAMPLE_CONFIG})")
    if not os.path.isfile(config_file):
        if os.path.exists(config_file):  # a device or a pipe
            raise ConfigError(f"config file {config_file} is not a regular file")
        raise FileNotFoundError(f"config file not found: {config_file}")
    cfg = _load_lazy_config(config_file)
    if OmegaConf.to_container(cfg) is None:  # an empty YAML file
        raise ConfigError(f"config file {config_file} is empty (e.g. {_EXAMPLE_CONFIG})")
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {config_file} holds a {type(cfg).__name__}, not a LazyConfig (a mapping of "
                          f"sections: model, train, ...; e.g. {_EXAMPLE_CONFIG})")
    for section in ("model", "train"):
        present = section in cfg
        if (section == "model" or present) and not (present and isinstance(cfg._get_node(section), DictConfig)):
            what = "has no mapping for" if present else "defines no"
            raise ConfigError(f"config file {config_file} {what} '{section}': a Focus-DETR LazyConfig defines model, "
                              f"train, dataloader, optimizer and lr_multiplier (e.g. {_EXAMPLE_CONFIG})")
    return apply_overrides(cfg, overrides)


def load_config_for_tool(config_file, tool_overrides, user_overrides, tool):
    """:func:`load_config` with a tool's own overrides (``tool`` names it), then the user's: a tool override that does
    not fit the config is named as the tool's, not left for the user to look for on their command line."""
    cfg = load_config(config_file)
    try:
        apply_overrides(cfg, tool_overrides)
    except ConfigError as error:
        raise ConfigError(f"{error} (an override that {tool} itself applies, written for the tree model's config: "
                          "use configs/focus_detr_r18_trees.py or a config that keeps its data pipeline)") from None
    return apply_overrides(cfg, user_overrides)


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
            hint = "; write key=value without spaces around it" if spaced else ""
            return f"cannot read config override {override!r}: {_flat(str(parse_error).splitlines()[0])}{hint}"
    return f"cannot apply overrides {overrides}: {_flat(error)}"


def apply_overrides(cfg, overrides=()):
    """``key=value`` overrides (a list of strings) applied to ``cfg`` (in place; returned), each key and value type
    checked first. Raises ConfigError with a one-line message."""
    overrides = _override_list(overrides)
    check_override_keys(cfg, overrides)
    old_values = {o.split("=", 1)[0].strip(): _current_value(cfg, o.split("=", 1)[0].strip()) for o in overrides}
    try:
        cfg = LazyConfig.apply_overrides(cfg, overrides)
    except Exception as error:
        raise ConfigError(_override_error(overrides, error)) from None
    check_override_types(old_values, cfg, overrides)
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


def check_datasets_registered(cfg_node):
    """Raises ConfigError naming the first dataset the config uses that is not in detectron2's DatasetCatalog."""
    from detectron2.data import DatasetCatalog

    registered = DatasetCatalog.list()
    for name in _dataset_names_in(cfg_node):
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=3)
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise ConfigError(
                f"dataset {name!r} is not registered{hint}; a config registers its own data (the tree sets: "
                "configs/common/data/trees.py, i.e. focus_detr.data.register_trees()), COCO names need "
                "DETECTRON2_DATASETS pointing at the COCO folder"
            )
