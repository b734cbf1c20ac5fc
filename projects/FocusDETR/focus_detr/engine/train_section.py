"""The entries of a config's ``train`` section that the engine reads; any other entry would be ignored without a word
(detrex's ``train.fast_dev_run.enabled=True`` ran all 90,000 iterations, ``+train.wandb.enabled=True`` logged
nowhere), so it is refused in one line naming it, with close names or detrex's counterpart."""
import difflib
import inspect

from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel

from .detrex_names import detrex_hint

__all__ = ["train_entry_problem", "unknown_train_entry"]


def _ddp_arguments():
    """``train.ddp``'s entries: the keyword arguments of the installed torch's DistributedDataParallel and
    detectron2's ``create_ddp_model`` (``fp16_compression``). Checked in every run: a misspelled one
    (``find_unused_parameter``) failed only in a run of several processes, in DistributedDataParallel."""
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    return {**{name: None for name in parameters if name not in ("self", "module")}, "fp16_compression": None}


# name -> None for a value, or the entries of a section. Read by the engine, and by detectron2's default_setup
# (output_dir, seed, cudnn_benchmark).
TRAIN_ENTRIES = {
    "output_dir": None, "init_checkpoint": None, "max_iter": None, "device": None, "seed": None,
    "cudnn_benchmark": None,
    "eval_period": None, "log_period": None, "selection_quality": None,
    "release_freed_memory_period": None, "malloc_mmap_threshold_mib": None,
    "amp": {"enabled": None, "precision": None},
    "inference_amp": {"enabled": None, "precision": None},
    "inference_cuda_graphs": {"enabled": None, "max_graphs": None},
    "ddp": _ddp_arguments(),
    "clip_grad": {"enabled": None, "params": {"max_norm": None, "norm_type": None}},
    "model_ema": {"enabled": None, "decay": None, "use_for_eval": None},
    "checkpointer": {"period": None, "max_to_keep": None, "save_safetensors": None},
}

# detrex's train entries whose value, as detrex's common config writes it, asks for nothing here: a config ported
# from detrex keeps them without effect. Each judges (its value, the section holding it).
_DETREX_OFF = {
    "train.fast_dev_run": lambda value, _: isinstance(value, DictConfig) and value.get("enabled", False) is False,
    "train.wandb": lambda value, _: isinstance(value, DictConfig) and value.get("enabled", False) is False,
    "train.model_ema.device": lambda value, _: value in ("", None),
    # only without an average does it not matter that detrex's False (evaluate the trained weights) is not ours
    "train.model_ema.use_ema_weights_for_eval_only": lambda value, ema: value is False and not ema.get("enabled"),
}


def train_entry_problem(key):
    """Why the dotted ``key`` (``train.<...>``) is no entry the engine reads, as ``(unknown key, hint)``, or None.
    Values' own insides are not judged."""
    entries, parts = TRAIN_ENTRIES, key.split(".")[1:]
    for index, part in enumerate(parts):
        if entries is None:
            return None
        if part not in entries:
            unknown = ".".join(["train"] + parts[: index + 1])
            parent = ".".join(["train"] + parts[:index])
            close = [f"{parent}.{name}" for name in difflib.get_close_matches(part, list(entries), n=3)]
            hint = detrex_hint(unknown) or (f" (did you mean: {', '.join(close)}?)" if close else "")
            return unknown, hint
        entries = entries[part]
    return None


def unknown_train_entry(train):
    """``(key, hint)`` of the first entry of the config's ``train`` section (a DictConfig) that the engine does not
    read, or None. detrex's entries that are switched off (:data:`_DETREX_OFF`) pass."""
    def walk(node, prefix):
        for name in node.keys():
            key = f"{prefix}.{name}"
            child = node._get_node(name)
            problem = train_entry_problem(key)
            if problem is not None:
                if key in _DETREX_OFF and _DETREX_OFF[key](node.get(name), node):
                    continue
                return problem
            if isinstance(child, DictConfig):
                found = walk(child, key)
                if found is not None:
                    return found
        return None

    return walk(train, "train") if isinstance(train, DictConfig) else None
