"""The paper's component ablations as config overrides, and the bookkeeping of an ablation study: which runs it holds,
which are finished (the per-variant summary is :mod:`.ablation_report`'s, what a run is trained with and the check of
a run folder's settings :mod:`.ablation_settings`'s).

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
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence


from ..engine.checkpoint import write_json
from ..engine.config_types import is_number
from ..engine.output_lock import OutputDirInUseError, OutputDirLock
from .ablation_settings import check_run_settings, overrides_by_key, resolved_config

__all__ = [
    "VARIANTS",
    "AblationRun",
    "planned_runs",
    "variant_overrides",
    "read_finished_run",
    "write_finished_run",
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
        undone = [variant for variant, own in overrides_of.items()
                  if any(_overlap(key, k) for k in overrides_by_key(own))]
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
