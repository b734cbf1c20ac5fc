"""The paper's component ablations as config overrides, and the bookkeeping of an ablation study: which runs it holds,
which are finished, and the per-variant summary (mean, seed range, difference to ``full``).

A study folder holds one folder per run, ``<variant>/seed<k>/``: a training run (its checkpoints, log and metrics),
its evaluation in ``eval/``, and ``ablation_run.json`` once both are done, which marks the run finished. Several
invocations of one study share its runs: each takes the next run that is neither finished nor being run.
"""
import contextlib
import json
import math
import os
import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from ..engine.output_lock import OutputDirInUseError, OutputDirLock

__all__ = [
    "VARIANTS",
    "AblationRun",
    "planned_runs",
    "variant_overrides",
    "read_finished_run",
    "write_finished_run",
    "selection_columns",
    "summarize_variants",
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


def planned_runs(output: str, variants: Sequence[str], seeds: Sequence[int]) -> List[AblationRun]:
    """Every (variant, seed) run of a study in ``output``, seed-major: all variants with the first seed come first,
    so a study cut short still compares every variant."""
    variants = _check_variants(variants)
    if not seeds:
        raise ValueError("an ablation needs at least one seed")
    return [AblationRun(v, s, os.path.join(output, v, f"seed{s}")) for s in seeds for v in variants]


def write_finished_run(run: AblationRun, record: Dict) -> None:
    """Marks ``run`` finished with its ``record`` (metrics, training time), written atomically."""
    temporary = run.record_path + ".tmp"
    with open(temporary, "w") as f:
        json.dump({"variant": run.variant, "seed": run.seed, **record}, f, indent=1)
    os.replace(temporary, run.record_path)


def read_finished_run(run: AblationRun):
    """``run``'s record, or None when it is not finished (no record, or one that cannot be read)."""
    try:
        with open(run.record_path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("variant") != run.variant or record.get("seed") != run.seed:
        return None
    return record


def selection_columns(eval_results: Dict) -> Dict[str, float]:
    """The last encoder layer's token-selection quality from a run's ``eval_results`` (percent; NaN when the
    evaluation did not measure it): object recall overall and for small objects, foreground precision."""
    quality = (eval_results or {}).get("selection_quality") or {}
    layers = [int(key.rsplit("layer", 1)[1]) for key in quality if key.startswith("object_recall/layer") and
              key.count("/") == 1]
    if not layers:
        return {name: float("nan") for name in ("recall_last_layer", "recall_small_last_layer",
                                                "precision_last_layer")}
    last = f"layer{max(layers)}"
    return {
        "recall_last_layer": quality.get(f"object_recall/{last}", float("nan")),
        "recall_small_last_layer": quality.get(f"object_recall/{last}/small", float("nan")),
        "precision_last_layer": quality.get(f"foreground_precision/{last}", float("nan")),
    }


def _mean_and_range(values: List[float]):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan"), float("nan")
    return statistics.fmean(values), min(values), max(values)


def summarize_variants(rows: List[Dict], metric: str = "AP", reference: str = "full") -> List[Dict]:
    """Per variant (in the order first seen in ``rows``): seeds, mean, min and max of ``metric``, the difference of
    the means to ``reference``, and whether it exceeds the seed spread: True when the two variants' ranges over
    seeds do not overlap, False when they do, None when either has fewer than two seeds (no spread to compare)."""
    by_variant: Dict[str, List[float]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(float(row[metric]))
    stats = {v: (len(values),) + _mean_and_range(values) for v, values in by_variant.items()}
    summary = []
    for variant, (seeds, mean, low, high) in stats.items():
        entry = {"variant": variant, "seeds": seeds, "mean": mean, "min": low, "max": high,
                 "difference": float("nan"), "exceeds_seed_spread": None}
        if reference in stats and variant != reference:
            ref_seeds, ref_mean, ref_low, ref_high = stats[reference]
            entry["difference"] = mean - ref_mean
            if seeds >= 2 and ref_seeds >= 2:
                entry["exceeds_seed_spread"] = high < ref_low or low > ref_high
        summary.append(entry)
    return summary


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


def run_pending(runs: Sequence[AblationRun], train_and_evaluate, log=print) -> List[Optional[Dict]]:
    """Calls ``train_and_evaluate(run) -> record`` for each run not finished yet, marking it finished after; runs
    already finished are skipped (so an interrupted study resumes where it stopped), and so are runs another
    invocation of the study is working on (so several invocations share the runs between them). Returns each run's
    record, None for a run left to another invocation and still unfinished at the end."""
    records = []
    for number, run in enumerate(runs, 1):
        where = f"run {number}/{len(runs)}: {run.variant}, seed {run.seed}"
        record = read_finished_run(run)
        if record is not None:
            log(f"[ablation] {where}: finished earlier, skipped")
        else:
            with _claimed(run) as claimed:
                record = read_finished_run(run)  # another invocation may have just finished it
                if claimed and record is None:
                    log(f"[ablation] {where} -> {run.folder}")
                    write_finished_run(run, train_and_evaluate(run))
                    record = read_finished_run(run)
                elif not claimed:
                    log(f"[ablation] {where}: another invocation is running it, skipped")
        records.append(record)
    # runs left to another invocation may have finished while this one worked through the list
    return [record or read_finished_run(run) for run, record in zip(runs, records)]
