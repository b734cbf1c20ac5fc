"""Loading LazyConfig files (then their overrides, :func:`.config.apply_overrides`), failing with one clear line for
missing files, files that are not a config, and config files that do not parse or that raise while they run."""
import ast
import os
import re

import yaml
from detectron2.config import LazyConfig
from omegaconf import DictConfig, OmegaConf

from ..data.tree_registration import register_named_tree_sets
from .checkpoint import atomic_write
from .config import ConfigError, _dataset_names_in, _flat, apply_overrides
from .train_section import unknown_train_entry
from .yaml_config import load_yaml_config

__all__ = ["check_train_entries", "keep_saved_config_order", "load_config", "load_config_for_tool"]

# detectron2 runs every config file (the one named and those it imports) in a package named like this, and re-raises
# a syntax error of any of them as "Config file <path> has syntax error!" from the parser's error.
_CONFIG_PACKAGE_PREFIX = "detectron2._cfg_loader"
_DETECTRON2_SYNTAX_ERROR = re.compile(r"^Config file (.+) has syntax error!$")
_CONFIG_EXTENSIONS = (".py", ".yaml", ".yml")


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
        pickled = (" (detectron2's pickled copy of a config it could not write as YAML: not loaded, unpickling runs "
                   "code; use the .py config the run came from)") if config_file.endswith(".yaml.pkl") else ""
        raise ConfigError(f"config file {config_file} is neither a LazyConfig .py file nor a .yaml file{pickled}")
    unreadable_copy = ("detectron2 wrote it as a readable copy only, beside config.yaml.pkl (the config held what YAML "
                       "cannot, e.g. a lambda)") if os.path.isfile(config_file + ".pkl") else ""
    try:
        if config_file.endswith((".yaml", ".yml")):
            return load_yaml_config(config_file)
        return LazyConfig.load(config_file)
    except ConfigError as error:
        if unreadable_copy:  # the tag of the lambda (or whatever it held) was refused: say why it is there
            raise ConfigError(f"{error}; {unreadable_copy}") from error  # (its message says to use the .py config)
        raise
    except SyntaxError as error:
        raise ConfigError(_syntax_error_message(config_file, error)) from error
    except Exception as error:
        frame = _config_frame(error.__traceback__)
        if frame is not None:
            failing_file, line = frame
            hint = _DETREX_CONFIG_HINT if isinstance(error, ImportError) and _is_detrex_module(error.name) else ""
            raise ConfigError(f"config file {failing_file}: {type(error).__name__} at line {line}: {_flat(error)}"
                              f"{hint}") from error
        # raised before any config code ran: reading or parsing the file
        if isinstance(error, yaml.YAMLError):
            raise ConfigError(_yaml_error_message(config_file, error) + (
                unreadable_copy and f"; {unreadable_copy}: use the .py config the run came from")) from error
        if isinstance(error, UnicodeDecodeError):
            raise ConfigError(f"config file {config_file} is not a text file ({error.reason} at byte {error.start})"
                              ) from error
        raise  # e.g. an OSError reading it: its own one-line message


_EXAMPLE_CONFIG = "configs/focus_detr_r18_trees.py"
# The official code's packages: detrex, and its projects/focus_detr (FOCUS_DETR, its mapper).
_DETREX_PACKAGES = ("detrex", "projects.focus_detr")
_DETREX_CONFIG_HINT = ("; it is a detrex config: use this project's config of the same name in configs/ (e.g. "
                       "configs/focus_detr_r50_4scale_12ep.py), which loads official weights too "
                       "(train.init_checkpoint=FILE)")


def _is_detrex_module(name) -> bool:
    return isinstance(name, str) and any(name == p or name.startswith(p + ".") for p in _DETREX_PACKAGES)


def _detrex_model_problem(cfg):
    """The model target's module when it is the official code's (a detrex config, run where detrex is installed: its
    own FOCUS_DETR, which our checkpoint loader and mapper checks do not fit), else None."""
    target = cfg.model.get("_target_", None) if isinstance(cfg.get("model", None), DictConfig) else None
    module = getattr(target, "__module__", None) if callable(target) else str(target or "").rpartition(".")[0]
    return module if _is_detrex_module(module) else None


def _assigns_at_top_level(config_file, name):
    """Whether the .py ``config_file`` assigns ``name`` at its top level (read, not run). detectron2's loader keeps
    only mappings and lists, so ``model = 5`` reaches us as a config without ``model``."""
    if not config_file.endswith(".py"):
        return False
    try:
        with open(config_file, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):  # it loaded, so this is not expected; the plain message then holds
        return False
    targets = []
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            targets += statement.targets
        elif isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
            targets.append(statement.target)
    return any(isinstance(target, ast.Name) and target.id == name for target in targets)


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
            what = f"has no mapping for '{section}'" if present else f"defines no '{section}'"
            if not present and _assigns_at_top_level(config_file, section):
                what = (f"sets '{section}' to something that is neither a LazyCall(...) nor a dict, which detectron2's "
                        "loader drops")
            raise ConfigError(f"config file {config_file} {what}: a Focus-DETR LazyConfig defines model, "
                              f"train, dataloader, optimizer and lr_multiplier (e.g. {_EXAMPLE_CONFIG})")
    detrex_module = _detrex_model_problem(cfg)
    if detrex_module is not None:
        raise ConfigError(f"config file {config_file} builds the official code's model ({detrex_module})"
                          f"{_DETREX_CONFIG_HINT}")
    cfg = apply_overrides(cfg, overrides)
    check_train_entries(cfg)
    if config_file.endswith((".yaml", ".yml")):  # a run's saved config.yaml: the .py it came from registered them
        register_named_tree_sets(_dataset_names_in(cfg.get("dataloader", None) or {}))
    return cfg


def check_train_entries(cfg):
    """Raises ConfigError naming the first entry of ``cfg.train`` that nothing reads (:mod:`.train_section`)."""
    unknown = unknown_train_entry(cfg.get("train", None))
    if unknown is not None:
        key, hint = unknown
        raise ConfigError(f"config key {key} is not a setting of the train section: nothing would read it{hint}")


def load_config_for_tool(config_file, tool_overrides, user_overrides, tool):
    """:func:`load_config` with a tool's own overrides (``tool`` names it), then the user's: a tool override that does
    not fit the config is named as the tool's, not left for the user to look for on their command line."""
    cfg = load_config(config_file)
    try:
        apply_overrides(cfg, tool_overrides)
    except ConfigError as error:
        raise ConfigError(f"{error} (an override that {tool} itself applies, written for the tree model's config: "
                          "use configs/focus_detr_r18_trees.py or a config that keeps its data pipeline)") from None
    cfg = apply_overrides(cfg, user_overrides)
    check_train_entries(cfg)
    return cfg


def _put_in_order(node, order):
    """Orders each mapping of the YAML node tree ``node`` as the same mapping of ``order`` (plain dicts and lists)."""
    if isinstance(node, yaml.MappingNode) and isinstance(order, dict):
        position = {key: i for i, key in enumerate(order)}
        node.value.sort(key=lambda pair: position.get(getattr(pair[0], "value", None), len(position)))
        for key, value in node.value:
            _put_in_order(value, order.get(getattr(key, "value", None)))
    elif isinstance(node, yaml.SequenceNode) and isinstance(order, list) and len(node.value) == len(order):
        for item, item_order in zip(node.value, order):
            _put_in_order(item, item_order)


def keep_saved_config_order(cfg, path):
    """Rewrites the ``config.yaml`` at ``path``, which detectron2's ``LazyConfig.save`` writes with its keys sorted,
    in ``cfg``'s key order. ``instantiate`` builds a config's parts in that order, and so draws their random initial
    weights in it: sorted, ResNet's ``stages`` were built before its ``stem``, and a run trained from its own
    config.yaml got other weights than the run it came from (39 of the tree model's 264 tensors). The file is
    reordered as YAML nodes (nothing in it is constructed, its tags such as detectron2's ShapeSpec stay as written);
    one that is not YAML is left as it is."""
    try:
        with open(path) as f:  # the locale's encoding, in which detectron2 wrote it and atomic_write writes
            node = yaml.compose(f)
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: UnicodeDecodeError
        return
    if node is None:
        return
    _put_in_order(node, OmegaConf.to_container(cfg, resolve=False))
    dumped = yaml.serialize(node, allow_unicode=True, width=9999)  # each node keeps its flow or block style
    atomic_write(os.path.realpath(path), lambda f: f.write(dumped), mode="w")  # a linked config.yaml stays a link
