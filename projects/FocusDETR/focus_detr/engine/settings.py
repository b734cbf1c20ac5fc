"""Checks of what a loaded config asks for, made before the work starts, each a one-line ConfigError naming the
entry: the sections a task needs, the training schedule, the output folder, the device."""
import os
import shutil
import tempfile

import torch

from ..data.tree_source import default_cache_dir
from .config import ConfigError
from .config_types import is_number

__all__ = ["FORMAT_KEYS", "RESIZE_KEYS", "check_free_space", "check_output_dir", "check_output_file",
           "check_output_outside_tree_cache", "check_schedule", "check_seed", "mapper_entry", "nearest_existing",
           "require_sections", "resolve_device"]


def require_sections(cfg, sections, task):
    """Raises ConfigError naming the first of ``sections`` (dotted: ``"dataloader.train"``) that ``cfg`` lacks,
    and ``task`` (e.g. "training") that needs it."""
    for dotted in sections:
        node = cfg
        for name in dotted.split("."):
            node = node.get(name, None) if hasattr(node, "get") else None
        if node is None:
            raise ConfigError(f"the config defines no '{dotted}', which {task} needs")


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_schedule(train):
    """Raises ConfigError for a ``train`` section whose iteration counts cannot drive a run: ``max_iter`` and
    ``log_period`` must be positive integers, ``eval_period`` a non-negative one (0: only the final evaluation).
    Unchecked, a negative max_iter trained nothing and reported the AP of random weights with exit status 0, and a
    zero max_iter or log_period divided by zero after the set-up. Also the switches of gradient clipping, the weight
    average and the checkpoint period (:func:`_check_training_switches`)."""
    for key in ("max_iter", "log_period"):
        value = train.get(key, None)
        if not _positive_int(value):
            raise ConfigError(f"train.{key} must be a positive integer, got {value!r}")
    eval_period = train.get("eval_period", 0)
    if not (_positive_int(eval_period) or eval_period == 0):
        raise ConfigError(
            f"train.eval_period must be an integer >= 0 (0: evaluate at the end only), got {eval_period!r}"
        )
    _check_training_switches(train)


def _section(train, name):
    section = train.get(name, None)
    if section is not None and not hasattr(section, "get"):
        raise ConfigError(f"train.{name} must be a section (train.{name}.enabled=...), got {section!r}")
    return section or {}


def _check_training_switches(train):
    """``train.clip_grad``, ``train.model_ema`` and ``train.checkpointer``: ``enabled`` must be True or False (None
    switched clipping and the average off without a word), and what an enabled one needs must be a number (``null``
    ended in a TypeError traceback); their ranges are checked where they are used (trainer, hooks)."""
    for name in ("clip_grad", "model_ema"):
        enabled = _section(train, name).get("enabled", False)
        if not isinstance(enabled, bool):
            raise ConfigError(f"train.{name}.enabled must be True or False, got {enabled!r}")
    clip = _section(train, "clip_grad")
    numbers = {}
    if clip.get("enabled", False):
        params = clip.get("params", None) or {}
        numbers["train.clip_grad.params.max_norm"] = params.get("max_norm", None)
        numbers["train.clip_grad.params.norm_type"] = params.get("norm_type", 2.0)
    numbers["train.model_ema.decay"] = _section(train, "model_ema").get("decay", 0.999)
    for key, value in numbers.items():
        if not is_number(value):
            raise ConfigError(f"{key} must be a number, got {value!r}")
    period = _section(train, "checkpointer").get("period", None)
    if not _positive_int(period):
        raise ConfigError(f"train.checkpointer.period must be a positive integer, got {period!r}")
    use_for_eval = _section(train, "model_ema").get("use_for_eval", True)
    if not isinstance(use_for_eval, bool):
        raise ConfigError(f"train.model_ema.use_for_eval must be True or False, got {use_for_eval!r}")


# A mapper config's entries: ours (DetrDatasetMapper), then detectron2's DatasetMapper's
RESIZE_KEYS = ("augmentation", "augmentations")
FORMAT_KEYS = ("img_format", "image_format")


def mapper_entry(mapper, keys):
    """The first of ``keys`` the mapper config ``mapper`` has, with its value; ``(None, None)`` when it has none (or
    is no config node)."""
    for key in keys:
        if hasattr(mapper, "keys") and key in mapper:
            return key, mapper[key]
    return None, None


def check_seed(train):
    """Raises ConfigError unless ``train.seed`` is -1 (a random seed) or one numpy takes (0 to 2**32 - 1): detectron2
    said "Seed must be between 0 and 2**32 - 1" without the key, and turned other negative seeds into random ones."""
    seed = train.get("seed", -1)
    if not (isinstance(seed, int) and not isinstance(seed, bool) and (seed == -1 or 0 <= seed < 2**32)):
        raise ConfigError(f"train.seed must be an integer from 0 to 2**32 - 1, or -1 for a random seed, got {seed!r}")


def nearest_existing(path):
    """``path``, or the nearest of its parent folders that exists."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return existing


# Below this, even a log and a config cannot be written: detectron2's logging then prints a traceback per line
MIN_FREE_BYTES = 1 << 20


def _check_no_unexpanded_home(path, key):
    """ConfigError for a ``path`` whose first part is a ``~`` no shell expanded (quoted, or written in a config): a
    folder named ``~`` was made in the working folder, and the run's results went there (one ``rm -rf ~`` from
    deleting the user's home). A ``~`` folder that exists is taken as meant."""
    first = str(path).split(os.sep, 1)[0]
    if first.startswith("~") and not os.path.exists(first):
        raise ConfigError(f"{key} {path} starts with {first!r}, which only a shell expands (not inside quotes, nor in "
                          f"a config): write the path out, e.g. {os.path.expanduser(str(path))}")


def _dangling_link_on(path):
    """The link on the way to ``path`` (the nearest part of it that is there) when it points at nothing, else None."""
    part = os.path.abspath(path)
    while not os.path.lexists(part) and os.path.dirname(part) != part:
        part = os.path.dirname(part)
    return part if os.path.islink(part) and not os.path.exists(part) else None


def check_output_dir(path, key="train.output_dir", create=True):
    """Creates the output folder ``path`` (config entry ``key``) and checks that a file can be written in it and that
    its disk has room for a log (:func:`check_free_space`); raises ConfigError naming the folder and the reason (a
    file in the way, read-only, no permission, a full disk). ``create=False``: the folder is made later (by a command
    that may still refuse its other arguments), and the nearest existing part of ``path`` is checked instead."""
    if not path:
        return
    _check_no_unexpanded_home(path, key)
    link = _dangling_link_on(path)
    if link is not None:  # makedirs would say "File exists" or "No such file or directory"
        where = "is" if link == os.path.abspath(path) else f"is in {link}, which is"
        raise ConfigError(f"{key} {path} {where} a link to {os.readlink(link)}, which does not exist: create that "
                          "folder or remove the link")
    existing = nearest_existing(path)
    if not os.path.isdir(existing):
        raise ConfigError(f"{key} {path} cannot be created: {existing} is a file, not a folder")
    try:
        if create:
            os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path if create else existing):
            pass
    except OSError as error:
        raise ConfigError(f"{key} {path} is not writable: {error.strerror or error}") from None
    check_free_space(path, key)


def check_output_outside_tree_cache(path, key="train.output_dir"):
    """ConfigError when the output folder ``path`` (config entry ``key``) is in the tree data's cache folder, which a
    rebuild (``tools/prepare_trees.py --force``, or of a damaged cache) replaces whole: a run's checkpoints and
    results there were deleted with it."""
    if not path:
        return
    cache, target = os.path.realpath(default_cache_dir()), os.path.realpath(path)
    if target == cache or target.startswith(cache + os.sep):
        raise ConfigError(f"{key} {path} is in the tree data's cache {cache}, which a rebuild of the data replaces "
                          "whole, results included: choose a folder outside it")


def check_output_file(path, option, example, inputs=None):
    """Raises a one-line error unless the file ``path`` (command-line ``option``) can be written: a folder is named
    as such with the file name ``example`` suggested in it, the file's folder is checked as :func:`check_output_dir`
    checks one, and ``path`` must not be one of the tool's input files, ``inputs`` (option -> path; a fixture or a
    checkpoint was replaced by the tool's output). Tools call it before their runs, which take minutes, not after
    them."""
    _check_no_unexpanded_home(path, option)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{option} {path} is a folder: give a file name, e.g. {os.path.join(path, example)}")
    for input_option, input_path in (inputs or {}).items():
        if input_path and os.path.exists(path) and os.path.exists(input_path) and os.path.samefile(path, input_path):
            raise ValueError(f"{option} {path} is the {input_option} file: the output would replace it; name another "
                             "file")
    check_output_dir(os.path.dirname(os.path.abspath(path)), key=f"the folder of {option}")


def check_free_space(path, key="train.output_dir", needed_bytes=MIN_FREE_BYTES, needed_for="the log and the results"):
    """Raises ConfigError unless the disk of the folder ``path`` (config entry ``key``; or of the folder it will be
    created in) has ``needed_bytes`` free, for ``needed_for``."""
    free = shutil.disk_usage(nearest_existing(path)).free
    if free < needed_bytes:
        raise ConfigError(f"{key} {path} has {free / 2**20:.1f} MiB free, less than {needed_for} take "
                          f"({needed_bytes / 2**20:.1f} MiB): free some space or choose another {key}")


def resolve_device(device, name="train.device", cpu="train.device=cpu"):
    """``"auto"``/None -> "cuda" when a GPU is visible else "cpu"; other strings are checked to be usable. Errors
    name the setting as the user wrote it: ``name`` (``"train.device"``, ``"--device"``, ``"device"``) and how to
    ask for the CPU there (``cpu``)."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{name} {device!r} is not a torch device (auto, cpu, cuda, cuda:N)") from None
    if parsed.type == "cpu":
        return "cpu"  # one CPU device, whatever index was written
    if parsed.type != "cuda":  # mps, xpu, meta, ...: the deformable attention has CPU and CUDA kernels only
        raise ConfigError(f"{name} is {device!r}, which this project does not run on: use cpu or cuda (auto, cpu, "
                          "cuda, cuda:N)")
    if not torch.cuda.is_available():
        raise ConfigError(f"{name} is {device!r} but no CUDA GPU is visible; use {cpu}")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        visible = "cuda:0 is" if count == 1 else f"cuda:0 to cuda:{count - 1} are"
        raise ConfigError(f"{name} is {device!r} but only {visible} visible")
    return str(parsed)
