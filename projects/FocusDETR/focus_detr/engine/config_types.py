"""The arguments a config gives its constructors, checked before anything is built: each one a setting the
constructor takes (a config file's typo or detrex name ended in "unexpected keyword argument"), no null where the
constructor has no default, and typed values of their type.

Every ``LazyCall`` node of a config (``model.transformer``, ``dataloader.test``, ...) names a callable; where that
callable annotates an argument as ``int``, ``float`` or ``bool``, or a sequence of one (``Sequence[int]``, ...), or
Optional of these, the value the config gives it must be one. Without this check a float where an integer is needed
(``num_queries = 300 / 3`` in a config file) or ``key=null`` on the command line reached the constructor and ended in
a TypeError traceback deep inside torch (``empty(): argument 'size' ... must be tuple of ints``, ``'<' not supported
between 'NoneType' and 'int'``).
"""
import collections.abc
import difflib
import functools
import inspect
import types
import typing
from typing import Iterator, Optional, Tuple

from omegaconf import DictConfig, ListConfig

from .detrex_names import detrex_hint

__all__ = ["accepts_keyword", "check_argument_types", "is_number", "located_target"]


def is_number(value) -> bool:
    """An int or a float, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_KINDS = {
    int: ("an integer", lambda value: isinstance(value, int) and not isinstance(value, bool)),
    float: ("a number", is_number),
    bool: ("True or False", lambda value: isinstance(value, bool)),
}
_SEQUENCES = (list, tuple, collections.abc.Sequence)
_PLURAL = {int: "integers", float: "numbers", bool: "True / False values"}


def _sequence_of(hint):
    """int for ``Sequence[int]`` / ``List[int]`` / ``Tuple[int, ...]`` (the same for float, bool), else None."""
    arguments = [argument for argument in typing.get_args(hint) if argument is not Ellipsis]
    if typing.get_origin(hint) in _SEQUENCES and len(set(arguments)) == 1 and arguments[0] in _KINDS:
        return arguments[0]
    return None


def located_target(target):
    """A LazyCall node's ``_target_``: the callable itself, found from its dotted name when a string; None when it
    cannot be found (instantiating the config then fails with its own message)."""
    if isinstance(target, str):
        from hydra.utils import get_method

        try:
            return get_method(target)
        except Exception:
            return None
    return target


def accepts_keyword(target, name) -> bool:
    """Whether the LazyCall target ``target`` takes an argument ``name`` (True when that cannot be told: the
    instantiation decides)."""
    target = located_target(target)
    if target is None:
        return True
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return True
    return any(parameter.kind == inspect.Parameter.VAR_KEYWORD or parameter.name == name
               for parameter in signature.parameters.values())


def _argument_names(target):
    try:
        return [name for name in inspect.signature(target).parameters if name != "self"]
    except (TypeError, ValueError):
        return []


@functools.lru_cache(maxsize=None)
def _typed_arguments(target) -> dict:
    """name -> (int / float / bool, whether a sequence of them, whether None is allowed) for ``target``'s
    arguments annotated so."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function)
        parameters = inspect.signature(function).parameters
    except Exception:  # no signature or unresolvable annotations: nothing to check
        return {}
    typed = {}
    for name, hint in hints.items():
        if name not in parameters:
            continue
        optional = parameters[name].default is None
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[int], int | None
            members = [member for member in typing.get_args(hint) if member is not type(None)]
            if len(members) != 1 or len(members) == len(typing.get_args(hint)):
                continue  # Union[int, str] and the like: more than one kind is meant
            hint, optional = members[0], True
        if hint in _KINDS:
            typed[name] = (hint, False, optional)
        elif _sequence_of(hint) is not None:
            typed[name] = (_sequence_of(hint), True, optional)
    return typed


@functools.lru_cache(maxsize=None)
def _required_arguments(target) -> Tuple[str, ...]:
    """The names of ``target``'s arguments without a default that are not annotated Optional: a config's None for
    one of them is no setting."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        parameters = inspect.signature(function).parameters
        hints = typing.get_type_hints(function)
    except Exception:
        return ()
    required = []
    for name, parameter in parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or name == "self":
            continue
        hint = hints.get(name)
        takes_none = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
        if parameter.default is inspect.Parameter.empty and not takes_none:
            required.append(name)
    return tuple(required)


def _lazy_calls(node, path: str) -> Iterator[Tuple[str, DictConfig]]:
    """(dotted path, node) of every LazyCall node below ``node``, outermost first."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _lazy_calls(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            child = node._get_node(index)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _lazy_calls(child, f"{path}.{index}")


def _argument_error(path: str, name: str, value, kind: type, sequence: bool, optional: bool) -> Optional[str]:
    description, accepts = _KINDS[kind]
    if value is None and optional:
        return None
    if isinstance(value, DictConfig) and "_target_" in value:
        return None  # a nested LazyCall builds the value
    if sequence:
        if isinstance(value, (ListConfig, list, tuple)) and all(accepts(item) for item in value):
            return None
        description = f"a list of {_PLURAL[kind]}"
    elif accepts(value):
        return None
    hint = ""
    if kind is int and not sequence and isinstance(value, float):
        hint = " (a division in a config file gives a float: use //, or int(...))"
    elif value is None:
        hint = " (it has no 'none' setting)"
    return f"config key {path}.{name} must be {description}, got {value!r}{hint}"


def check_argument_types(cfg) -> None:
    """Raises ``ConfigError`` naming the first config key whose value does not fit the type its constructor
    annotates (``int``, ``float``, ``bool``; None only where the argument is Optional or defaults to None)."""
    from .config import ConfigError

    calls = [(path, node, located_target(node.get("_target_"))) for path, node in _lazy_calls(cfg, "")]
    calls = [(path, node, target) for path, node, target in calls if target is not None]
    unknown = []
    for path, node, target in calls:
        for name in node.keys():
            if name != "_target_" and not accepts_keyword(target, name):
                # set in a config file (the command line checks its keys first): "unexpected keyword argument", a
                # traceback from the instantiation
                close = difflib.get_close_matches(str(name), _argument_names(target), n=3)
                hint = detrex_hint(f"{path}.{name}") or (f" (did you mean: {', '.join(close)}?)" if close else "")
                unknown.append(f"{path}.{name} is not a setting of {getattr(target, '__name__', target)}{hint}")
    if unknown:  # all at once: a config ported from detrex met them one run at a time
        raise ConfigError("config key " + unknown[0] if len(unknown) == 1 else
                          f"{len(unknown)} config keys are not settings: " + "; ".join(unknown))
    for path, node, target in calls:
        typed = _typed_arguments(target)
        for name in _required_arguments(target):
            if name in node and name not in typed and node._get_node(name)._is_none():  # typed: named below
                # model.neck=null reached the constructor: 'NoneType' object is not callable, deep in the build
                raise ConfigError(f"config key {path}.{name} cannot be null: {getattr(target, '__name__', target)} "
                                  "needs it (it has no default to fall back on)")
        for name, (kind, sequence, optional) in typed.items():
            if name not in node:
                continue
            try:
                value = node[name]
            except Exception:  # an interpolation that does not resolve fails with its own message later
                continue
            error = _argument_error(path, name, value, kind, sequence, optional)
            if error is not None:
                raise ConfigError(error)
