"""What an ablation run is trained with, and whether a run folder holds a run of the same settings: the config file,
the overrides, the CPU thread count, and the config they resolve to (the contents of the config's files included). A
run folder is only reused with the settings it was started with; arguments a newer config lists at their
constructor's defaults, and a device of "auto" that resolves to the recorded one, are no change."""
import inspect
import json
import os
import tempfile
from typing import Dict, List, Optional, Sequence

import yaml

from ..engine.config import flattened
from ..engine.config_types import located_target
from ..engine.settings import resolve_device

__all__ = ["check_run_settings", "overrides_by_key", "resolved_config", "run_settings",
           "training_command_overrides", "training_overrides"]


def run_settings(config_file: str, overrides: Sequence[str], run, threads: int) -> Dict:
    """What ``run`` is trained and evaluated with: the config file and the overrides (the variant's and the user's),
    its seed last, and the CPU threads of its processes (the thread count alone changes the trained weights)."""
    return {"config_file": os.path.abspath(config_file), "overrides": [*overrides, f"train.seed={run.seed}"],
            "threads": threads}


def training_overrides(run, settings: Dict) -> List[str]:
    """The overrides of ``run``'s training: its folder, no periodic evaluation (the run is evaluated by its own
    ``--eval-only`` command), then its ``settings``."""
    return [f"train.output_dir={run.folder}", "train.eval_period=0", *settings["overrides"]]


def training_command_overrides(run, settings: Dict) -> List[str]:
    """The overrides of ``run``'s training command: :func:`training_overrides`, then no evaluator and one numbered
    checkpoint kept. The run is scored by its own ``--eval-only`` command, so the training's final evaluation was a
    second pass over the test set, timed as training (more for the dense variant); a resume needs the last checkpoint
    only, where the configs keep 100 (a tree run's 4 intermediate checkpoints took 245 MB per run). Not among the
    settings compared across invocations: they change what the command does besides training, not the trained run."""
    return [*training_overrides(run, settings), "dataloader.evaluator=null", "train.checkpointer.max_to_keep=1"]


# a run folder holding any of these has results a later invocation reuses (skips, evaluates or resumes)
_RESULT_FILES = ("ablation_run.json", "model_final.pth", "last_checkpoint")
_MAX_LISTED_DIFFERENCES = 4  # the rest counted: the refusal stays one readable line


def _listed(differences: List[str]) -> str:
    more = len(differences) - _MAX_LISTED_DIFFERENCES
    return "; ".join(differences[:_MAX_LISTED_DIFFERENCES]) + (f"; and {more} more" if more > 0 else "")


def _differences(recorded: Dict, current: Dict) -> List[str]:
    return [f"{key}: {recorded.get(key, '(not set)')}, now {current.get(key, '(not set)')}"
            for key in sorted(recorded.keys() | current.keys()) if recorded.get(key) != current.get(key)]


def _config_differences(recorded: Dict, current: Dict) -> List[str]:
    """:func:`_differences` of two flattened resolved configs, where a key only one of them has counts as equal when
    its value there is its constructor's default (a config that lists an argument it left at its default before), and
    ``train.device`` is compared as the device it resolves to here ("auto" is "cpu" on a CPU machine)."""
    def unchanged(key):
        only = current if key not in recorded else recorded if key not in current else None
        if only is not None:
            return only[key] == _constructor_default(only.get(key.rpartition(".")[0] + "._target_"),
                                                     key.rpartition(".")[2])
        if key == "train.device":
            return _device_here(recorded[key]) == _device_here(current[key])
        return False

    changed = [key for key in sorted(recorded.keys() | current.keys())
               if recorded.get(key) != current.get(key) and not unchanged(key)]
    return _differences({key: recorded[key] for key in changed if key in recorded},
                        {key: current[key] for key in changed if key in current})


_NO_DEFAULT = object()


def _constructor_default(target, argument):
    """The default of ``argument`` in the signature of ``target`` (a dotted name, as a saved config writes it), or a
    value nothing equals when there is none."""
    try:
        parameter = inspect.signature(located_target(target)).parameters[argument]
    except (TypeError, ValueError, KeyError):  # not found or not callable, no signature, no such argument
        return _NO_DEFAULT
    return _NO_DEFAULT if parameter.default is inspect.Parameter.empty else parameter.default


def _device_here(device):
    try:
        return resolve_device(device)
    except ValueError:  # e.g. "cuda" on a machine without one: compared as written
        return device


def overrides_by_key(overrides: Sequence[str]) -> Dict[str, str]:
    # applied in order, so the last value of a key is the one that counts; the order of different keys does not
    return {key.strip(): value.strip() for key, _, value in (o.partition("=") for o in overrides)}


class _SavedConfigLoader(yaml.SafeLoader):
    """Reads a saved LazyConfig (``config.yaml``) as plain data: a Python object in it (``!!python/object:...``, e.g.
    a ShapeSpec) becomes ``{"!<its tag>": <its fields>}`` instead of being built."""


def _python_object_as_data(loader, tag_suffix, node):
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return {"!" + tag_suffix: value}


_SavedConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", _python_object_as_data)


def _saved_config(path: str) -> Dict:
    """A saved ``config.yaml``, flattened, as it reads back from JSON (how ``ablation_settings.json`` keeps it),
    without ``train.output_dir``: where the run is, not how (the same folder may be named another way)."""
    with open(path) as f:
        config = flattened(yaml.load(f, _SavedConfigLoader))
    config.pop("train.output_dir", None)
    return json.loads(json.dumps(config))


def resolved_config(run, settings: Dict) -> Dict:
    """The config ``run``'s training gets from ``settings`` (:func:`run_settings`), flattened as LazyConfig.save
    writes it: the config file's contents and those of the files it imports, not just its path, so an edit of any
    of them shows as changed keys."""
    from detectron2.config import LazyConfig

    from ..engine import load_config

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.yaml")
        LazyConfig.save(load_config(settings["config_file"], training_overrides(run, settings)), path)
        return _saved_config(path)


def _recorded_config(run, recorded: Optional[Dict]) -> Dict:
    """The resolved config ``run`` was started with: recorded in ``ablation_settings.json``, or for runs from before
    that record, its ``config.yaml`` (what its last training started with)."""
    if isinstance((recorded or {}).get("config"), dict):
        return recorded["config"]
    try:
        return _saved_config(os.path.join(run.folder, "config.yaml"))
    except (OSError, yaml.YAMLError):
        raise ValueError(f"{run.folder} holds a run without a readable record of its settings "
                         f"({os.path.basename(run.settings_path)} or config.yaml), so it cannot be checked against "
                         f"this command's: give a new --output, or delete {run.folder} to train that run "
                         "again") from None


def _read_settings(run) -> Optional[Dict]:
    """``run``'s ``ablation_settings.json``, or None for a run from before that record."""
    try:
        with open(run.settings_path) as f:
            recorded = json.load(f)
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {run.settings_path} ({error}): give a new --output, or delete {run.folder} to "
                         "train that run again") from None
    return recorded


def _settings_differences(run, settings: Dict) -> List[str]:
    """The config file, the thread count and the overrides first (the shortest way to say what changed); when they
    are the same, the resolved configs, which differ when the contents of the config file or of a file it imports
    changed. A record without a thread count (written before it held one) is not checked for it."""
    recorded = _read_settings(run)
    if recorded is not None:
        differences = []
        if recorded.get("config_file") != settings["config_file"]:
            differences.append(f"config file: {recorded.get('config_file')}, now {settings['config_file']}")
        if "threads" in recorded and recorded["threads"] != settings["threads"]:
            differences.append(f"CPU threads (--threads): {recorded['threads']}, now {settings['threads']}")
        differences += _differences(overrides_by_key(recorded.get("overrides", [])),
                                    overrides_by_key(settings["overrides"]))
        if differences:
            return differences
    return _config_differences(_recorded_config(run, recorded), resolved_config(run, settings))


def check_run_settings(run, settings: Dict) -> None:
    """Refuses (ValueError naming ``run.folder`` and the differences) a run folder holding results (a finished run,
    final weights, a checkpoint to resume) of other settings than ``settings`` (:func:`run_settings`): reusing them
    would mix the two settings in one study."""
    if not any(os.path.exists(os.path.join(run.folder, name)) for name in _RESULT_FILES):
        return
    differences = _settings_differences(run, settings)
    if differences:
        raise ValueError(f"{run.folder} holds a run started with other settings ({_listed(differences)}): give a new "
                         f"--output for these settings, or delete {run.folder} to train that run again with them")
