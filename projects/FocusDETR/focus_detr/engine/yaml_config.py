"""Reading a ``.yaml`` LazyConfig (a run's saved ``config.yaml``, one shared with weights) as data.

detectron2 reads it with ``yaml.unsafe_load``, so a ``!!python/object/apply:os.system [...]`` tag runs when the file
is read, and ``instantiate`` then calls whatever each ``_target_`` names. A ``.py`` config is a program and runs as
one, as in detectron2; a ``.yaml`` one here builds only what this project's configs build: its ``_target_`` entries
and ``!!python/name`` tags must name callables of the modules below, and its only objects are their dataclasses
(detectron2's ``ShapeSpec``), made from their fields. Anything else is refused in one line, before any of it runs.
"""
import dataclasses
import functools
import importlib
import types

import yaml
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from .config import ConfigError

__all__ = ["BUILDABLE_MODULES", "load_yaml_config"]

# What the configs' parts are built from (the saved config.yaml of every config in configs/ names nothing else).
# Whole modules hold parts only; of the packages that also read or write files, the callables the configs use.
BUILDABLE_MODULES = (
    "detectron2.data.transforms", "detectron2.layers", "detectron2.modeling", "detectron2.solver",
    "focus_detr.layers", "focus_detr.modeling", "fvcore.common.param_scheduler", "torch.nn", "torch.optim",
)
_BUILDABLE_CALLABLES = (
    "detectron2.data.build_detection_test_loader", "detectron2.data.build_detection_train_loader",
    "detectron2.data.get_detection_dataset_dicts", "detectron2.evaluation.COCOEvaluator",
    "focus_detr.data.DetrDatasetMapper", "focus_detr.data.get_checked_dataset_dicts",
    "focus_detr.engine.LrFactorByName", "focus_detr.engine.build_resumable_train_loader",
)
_REMEDY = ("a .yaml config is read as data and builds only what this project's configs build: use the .py config it "
           "came from")


def _in_buildable_module(module_name: str) -> bool:
    return any(module_name == m or module_name.startswith(m + ".") for m in BUILDABLE_MODULES)


@functools.lru_cache(maxsize=None)
def _buildable_callables():
    """Each of ``_BUILDABLE_CALLABLES`` by its name and by the one detectron2 may save it under (its module's)."""
    found = {}
    for name in _BUILDABLE_CALLABLES:
        target = locate(name)
        found[name] = found[f"{target.__module__}.{target.__qualname__}"] = target
    return found


def _buildable(name: str):
    """What ``name`` names when it is a callable of the buildable modules, else None. Checked on what it resolves
    to, not on its text: ``torch.nn.parallel.distributed.os.system`` starts with ``torch.nn`` and is ``os.system``.
    Only the buildable modules are imported; each step may reach a module of theirs only, no ``_`` name (the way to
    ``__globals__`` and the like), and the end must be defined in one of them."""
    exact = _buildable_callables()
    if name in exact:
        return exact[name]
    parts = name.split(".")
    module = next((m for m in BUILDABLE_MODULES if name.startswith(m + ".")), None)
    if module is None or any(not part or part.startswith("_") for part in parts):
        return None
    found = importlib.import_module(module)
    for part in name[len(module) + 1:].split("."):
        try:
            step = getattr(found, part)
        except AttributeError:
            if not isinstance(found, types.ModuleType):
                return None
            try:  # a submodule not imported yet
                step = importlib.import_module(f"{found.__name__}.{part}")
            except ImportError:
                return None
        if isinstance(step, types.ModuleType) and not _in_buildable_module(step.__name__):
            return None
        found = step
    if isinstance(found, types.ModuleType) or not _in_buildable_module(getattr(found, "__module__", None) or ""):
        return None
    return found


def _refuse(config_file, what, node):
    line = f" at line {node.start_mark.line + 1}" if node is not None else ""
    raise ConfigError(f"config file {config_file}{line}: {what}; {_REMEDY}")


def _loader_for(config_file):
    """A SafeLoader that also takes detectron2's tags of the buildable modules (``config_file`` names the file in
    errors)."""

    class _ConfigLoader(yaml.SafeLoader):
        pass

    def python_name(loader, suffix, node):
        found = _buildable(suffix)
        if found is None:
            _refuse(config_file, f"!!python/name:{suffix} is not a callable of {', '.join(BUILDABLE_MODULES)}", node)
        return found

    def python_object(loader, suffix, node):
        cls = _buildable(suffix)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            _refuse(config_file, f"!!python/object:{suffix} is not a dataclass of {', '.join(BUILDABLE_MODULES)}",
                    node)
        fields = loader.construct_mapping(node, deep=True)
        try:
            return cls(**fields)
        except TypeError as error:
            _refuse(config_file, f"!!python/object:{suffix} has other fields ({error})", node)

    def refused_tag(loader, suffix, node):
        _refuse(config_file, f"the tag {node.tag.replace('tag:yaml.org,2002:', '!!')} would run code when read", node)

    _ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                                  lambda loader, node: tuple(loader.construct_sequence(node)))
    _ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/name:", python_name)
    _ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/object:", python_object)
    _ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", refused_tag)  # apply, new, module, ...
    return _ConfigLoader


def _check_targets(config_file, node, key=""):
    """Refuses a ``_target_`` outside the buildable modules, anywhere in ``node``; ``key`` is its dotted key."""
    if isinstance(node, DictConfig):
        target = node.get("_target_", None)
        if target is not None:
            name = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"
            if _buildable(name) is None:
                _refuse(config_file, f"{key}._target_ {name} is not a callable of {', '.join(BUILDABLE_MODULES)}",
                        None)
        for child in node:
            if child != "_target_":
                _check_targets(config_file, node._get_node(child), f"{key}.{child}" if key else str(child))
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            _check_targets(config_file, node._get_node(index), f"{key}[{index}]")


def load_yaml_config(config_file: str) -> DictConfig:
    """The ``.yaml`` LazyConfig at ``config_file`` as detectron2 loads it (``allow_objects``), read without running
    code: ConfigError (one line, naming the file, the line or key and the tag or callable) for anything that would
    run other code than the buildable modules' (:data:`BUILDABLE_MODULES`) when read or built. yaml's own parse
    errors are raised as they are."""
    with open(config_file) as f:  # the locale's encoding, as detectron2 writes and reads it
        content = yaml.load(f, Loader=_loader_for(config_file))
    if content is not None and not isinstance(content, (dict, list)):  # OmegaConf's error would be a traceback
        raise ConfigError(f"config file {config_file} holds a {type(content).__name__}, not a LazyConfig (a mapping "
                          "of sections: model, train, ...)")
    cfg = OmegaConf.create(content, flags={"allow_objects": True})
    if content is not None:  # an empty file: load_config names it
        _check_targets(config_file, cfg)
    return cfg
