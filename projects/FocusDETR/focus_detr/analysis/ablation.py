"""The paper's component ablations as config overrides, and the bookkeeping of an ablation study: which runs it holds,
which are finished (the per-variant summary is :mod:`.ablation_report`'s).

A study folder holds one folder per run, ``<variant>/seed<k>/``: ``ablation_settings.json`` (what the run was started
with: config file, overrides and the config they resolve to), a training run (its checkpoints, log and metrics), its
evaluation in ``eval/``, and ``ablation_run.json`` once both are done, which marks the run finished. Several
invocations of one study share its runs: each takes the next run that is neither finished nor being run. A run folder
is only reused with the settings it was started with, the contents of the config's files included.
"""
import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import yaml

from ..engine.checkpoint import write_json
from ..engine.config import flattened
from ..engine.config_types import is_number
from ..engine.output_lock import OutputDirInUseError, OutputDirLock

__all__ = [
    "VARIANTS",
    "AblationRun",
    "planned_runs",
    "variant_overrides",
    "read_finished_run",
    "write_finished_run",
    "run_settings",
    "training_command_overrides",
    "training_overrides",
    "check_run_settings",
    "check_shared_overrides",
]

SELECTOR = "model.transformer.foreground_selector"
ENCODER = "model.transformer.encoder"

# name -> what the variant changes (the overrides themselves come from variant_overrides, which needs the config)
VARIANTS: Dict[str, str] = {
    "full": "the config as it is",
    "no_top_down": "no top-down modulation of the foreground scores by coarser levels",
    "no_cascade": "every encoder layer keeps the first layer's share of the foreground tokens",
    "no_fine_grained_attention": "no self-attention among fine-grained tokens in the encoder layers",
    "foreground_only_scoring": "fine-grained tokens ranked by the foreground score alone (no multi-category score)",
    "random_selection": "kept tokens drawn at random among the valid tokens, at the same counts",
    "dense": "every keep ratio 1.0: all tokens in every encoder layer (a DINO-like encoder)",
}


@dataclass(frozen=True)
class AblationRun:
    """One training of one variant with one seed, in ``folder``."""

    variant: str
    seed: int
    folder: str

    @property
    def record_path(self) -> str:
        return os.path.join(self.folder, "ablation_run.json")

    @property
    def settings_path(self) -> str:
        return os.path.join(self.folder, "ablation_settings.json")

    @property
    def eval_folder(self) -> str:
        return os.path.join(self.folder, "eval")


def _check_variants(variants: Sequence[str]) -> List[str]:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if len(set(variants)) != len(variants):
        raise ValueError(f"a variant is named twice in {list(variants)}")
    return list(variants)


def variant_overrides(cfg, variant: str) -> List[str]:
    """The ``key=value`` overrides that turn ``cfg`` (a loaded Focus-DETR LazyConfig) into ``variant``."""
    _check_variants([variant])
    try:
        cascade = [float(r) for r in cfg.model.transformer.foreground_selector.cascade_keep_ratios]
    except AttributeError:
        raise ValueError("the config has no model.transformer.foreground_selector: not a Focus-DETR config") from None

    def ratios(values):
        return "[" + ",".join(f"{v:g}" for v in values) + "]"

    return {
        "full": [],
        "no_top_down": [f"{SELECTOR}.top_down_modulation=False"],
        "no_cascade": [f"{SELECTOR}.cascade_keep_ratios={ratios([cascade[0]] * len(cascade))}"],
        "no_fine_grained_attention": [f"{ENCODER}.num_fine_grained_tokens=0"],
        "foreground_only_scoring": [f"{ENCODER}.fine_grained_scoring=foreground"],
        "random_selection": [f"{SELECTOR}.token_ranking=random"],
        "dense": [f"{SELECTOR}.keep_ratio=1.0", f"{SELECTOR}.cascade_keep_ratios={ratios([1.0] * len(cascade))}"],
    }[variant]


def _overlap(key: str, other: str) -> bool:
    # setting a parent replaces its children, and a child changes its parent
    return key == other or key.startswith(other + ".") or other.startswith(key + ".")


def check_shared_overrides(overrides: Sequence[str], overrides_of: Dict[str, List[str]]) -> None:
    """Refuses (one-line ValueError) an override given to every variant that sets a key a variant of
    ``overrides_of`` (variant -> its overrides) sets itself: applied after the variant's own, it would undo that
    variant, and rows labelled with it would be another variant's."""
    for override in overrides:
        key = override.partition("=")[0].strip()
        undone = [variant for variant, own in overrides_of.items() if any(_overlap(key, k) for k in _by_key(own))]
        if undone:
            names, whose = ", ".join(undone), "variants'" if len(undone) > 1 else "variant's"
            raise ValueError(f"{override} would undo the {names} {whose} own setting of {key} (your overrides are "
                             f"applied after the variant's): leave it out, or leave {names} out of --variants")


def planned_runs(output: str, variants: Sequence[str], seeds: Sequence[int]) -> List[AblationRun]:
    """Every (variant, seed) run of a study in ``output``, seed-major: all variants with the first seed come first,
    so a study cut short still compares every variant."""
    variants = _check_variants(variants)
    if not seeds:
        raise ValueError("an ablation needs at least one seed")
    return [AblationRun(v, s, os.path.join(output, v, f"seed{s}")) for s in seeds for v in variants]


def write_finished_run(run: AblationRun, record: Dict) -> None:
    """Marks ``run`` finished with its ``record`` (metrics, training time), written atomically."""
    write_json(run.record_path, {"variant": run.variant, "seed": run.seed, **record}, indent=1)


# A record's numbers, which the report computes with: each a number (NaN: COCO left it undefined) where present.
_RECORD_NUMBERS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "train_minutes")


def read_finished_run(run: AblationRun):
    """``run``'s record, or None when it is not finished: no record, or one that cannot be used (unreadable, another
    run's, or edited: a metric that is not a number, results that are not a mapping), which the study then evaluates
    again rather than report from (the report failed with a traceback, or summarised infinities)."""
    try:
        with open(run.record_path) as f:
            record = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("variant") != run.variant or record.get("seed") != run.seed:
        return None
    if "AP" not in record or not all(is_number(record[key]) and not math.isinf(record[key])
                                   for key in _RECORD_NUMBERS if key in record):
        return None
    if not isinstance(record.get("eval_results", {}), dict):
        return None
    return record


def run_settings(config_file: str, overrides: Sequence[str], run: AblationRun) -> Dict:
    """What ``run`` is trained and evaluated with: the config file and the overrides (the variant's and the user's),
    its seed last."""
    return {"config_file": os.path.abspath(config_file), "overrides": [*overrides, f"train.seed={run.seed}"]}


def training_overrides(run: AblationRun, settings: Dict) -> List[str]:
    """The overrides of ``run``'s training: its folder, no periodic evaluation (the run is evaluated by its own
    ``--eval-only`` command), then its ``settings``."""
    return [f"train.output_dir={run.folder}", "train.eval_period=0", *settings["overrides"]]


def training_command_overrides(run: AblationRun, settings: Dict) -> List[str]:
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


def _by_key(overrides: Sequence[str]) -> Dict[str, str]:
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


def resolved_config(run: AblationRun, settings: Dict) -> Dict:
    """The config ``run``'s training gets from ``settings`` (:func:`run_settings`), flattened as LazyConfig.save
    writes it: the config file's contents and those of the files it imports, not just its path, so an edit of any
    of them shows as changed keys."""
    from detectron2.config import LazyConfig

    from ..engine import load_config

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.yaml")
        LazyConfig.save(load_config(settings["config_file"], training_overrides(run, settings)), path)
        return _saved_config(path)


def _recorded_config(run: AblationRun, recorded: Optional[Dict]) -> Dict:
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


def _read_settings(run: AblationRun) -> Optional[Dict]:
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


def _settings_differences(run: AblationRun, settings: Dict) -> List[str]:
    """The config file and overrides first (the shortest way to say what changed); when they are the same, the
    resolved configs, which differ when the contents of the config file or of a file it imports changed."""
    recorded = _read_settings(run)
    if recorded is not None:
        differences = []
        if recorded.get("config_file") != settings["config_file"]:
            differences.append(f"config file: {recorded.get('config_file')}, now {settings['config_file']}")
        differences += _differences(_by_key(recorded.get("overrides", [])), _by_key(settings["overrides"]))
        if differences:
            return differences
    return _differences(_recorded_config(run, recorded), resolved_config(run, settings))


def check_run_settings(run: AblationRun, settings: Dict) -> None:
    """Refuses (ValueError naming ``run.folder`` and the differences) a run folder holding results (a finished run,
    final weights, a checkpoint to resume) of other settings than ``settings`` (:func:`run_settings`): reusing them
    would mix the two settings in one study."""
    if not any(os.path.exists(os.path.join(run.folder, name)) for name in _RESULT_FILES):
        return
    differences = _settings_differences(run, settings)
    if differences:
        raise ValueError(f"{run.folder} holds a run started with other settings ({_listed(differences)}): give a new "
                         f"--output for these settings, or delete {run.folder} to train that run again with them")


def _start(run: AblationRun, settings: Dict) -> None:
    """Checks ``run``'s folder against ``settings`` once more (another invocation may have started it meanwhile) and
    records them in it, with the config they resolve to now (what the training about to start reads)."""
    check_run_settings(run, settings)
    write_json(run.settings_path, {**settings, "config": resolved_config(run, settings)}, indent=1)


@contextlib.contextmanager
def _claimed(run: AblationRun):
    """Yields whether this process holds ``run``'s claim (the folder lock of :class:`OutputDirLock` on its own
    ``.ablation_run.lock``, beside the one its training takes): False when another invocation of the same study is
    working on it."""
    os.makedirs(run.folder, exist_ok=True)
    claim = OutputDirLock(run.folder, key="ablation run folder", lock_name=".ablation_run.lock")
    try:
        claim.acquire()
    except OutputDirInUseError:
        yield False
        return
    try:
        yield True
    finally:
        claim.release()


def run_pending(runs: Sequence[AblationRun], train_and_evaluate, log=print,
                settings: Optional[Dict[AblationRun, Dict]] = None) -> List[Optional[Dict]]:
    """Calls ``train_and_evaluate(run) -> record`` for each run not finished yet, marking it finished after; runs
    already finished are skipped (so an interrupted study resumes where it stopped), and so are runs another
    invocation of the study is working on (so several invocations share the runs between them). Returns each run's
    record, None for a run left to another invocation and still unfinished at the end.

    ``settings``: run -> what it is trained with (:func:`run_settings`), recorded in its folder when it starts. A run
    folder holding results of other settings is refused (:func:`check_run_settings`): every run before anything runs,
    and the runs another invocation ran at the end (it may have been started with other settings)."""
    if settings:  # every run now, not after hours of training the runs before a refused one
        for run in runs:
            check_run_settings(run, settings[run])
    records, trained_here = [], set()
    for number, run in enumerate(runs, 1):
        where = f"run {number}/{len(runs)}: {run.variant}, seed {run.seed}"
        record = read_finished_run(run)
        if record is not None:
            log(f"[ablation] {where}: finished earlier, skipped")
        else:
            with _claimed(run) as claimed:
                record = read_finished_run(run)  # another invocation may have just finished it
                if claimed and record is None:
                    if settings:
                        _start(run, settings[run])
                    log(f"[ablation] {where} -> {run.folder}")
                    write_finished_run(run, train_and_evaluate(run))
                    record = read_finished_run(run)
                    trained_here.add(run)
                elif not claimed:
                    log(f"[ablation] {where}: another invocation is running it, skipped")
        records.append(record)
    # runs left to another invocation may have finished while this one worked through the list
    records = [record or read_finished_run(run) for run, record in zip(runs, records)]
    if settings:
        for run in runs:
            if run not in trained_here:  # another invocation ran it, and may have been started with other settings
                check_run_settings(run, settings[run])
    return records
