"""An ablation study's results: the per-variant summary (mean and seed range, the difference to ``full`` and whether
it exceeds the seed spread), written as ``ablation.csv`` (one row per run), ``ablation.md`` (the summary; the
overrides of every variant and of each) and ``ablation.png`` (AP against GFLOPs and against latency, seed range as
error bars)."""
import csv
import math
import statistics
from typing import Dict, List, Sequence

from ..engine.config_types import is_number
from .ablation import VARIANTS

SELECTION_KEYS = ("recall_last_layer", "recall_small_last_layer", "precision_last_layer")

__all__ = ["CSV_COLUMNS", "selection_columns", "summarize_variants", "write_csv", "write_markdown", "write_plot"]

CSV_COLUMNS = ["variant", "seed", "AP", "AP50", "AP75", "APs", "APm", "APl", "gflops", "latency_ms", "train_minutes",
               "recall_last_layer", "recall_small_last_layer", "precision_last_layer"]


def selection_columns(eval_results: Dict) -> Dict[str, float]:
    """The last encoder layer's token-selection quality from a run's ``eval_results`` (percent; NaN when the
    evaluation did not measure it): object recall overall and for small objects, foreground precision."""
    quality = (eval_results or {}).get("selection_quality") or {}
    layers = [int(key.rsplit("layer", 1)[1]) for key in quality if key.startswith("object_recall/layer") and
              key.count("/") == 1 and key.rsplit("layer", 1)[1].isdigit()]
    if not layers:
        return {name: float("nan") for name in ("recall_last_layer", "recall_small_last_layer",
                                                "precision_last_layer")}
    last = f"layer{max(layers)}"

    def number(key):  # NaN where the record holds none (an edited or older record)
        value = quality.get(key)
        return float(value) if is_number(value) else float("nan")

    return {
        "recall_last_layer": number(f"object_recall/{last}"),
        "recall_small_last_layer": number(f"object_recall/{last}/small"),
        "precision_last_layer": number(f"foreground_precision/{last}"),
    }


def _mean_and_range(values: List[float]):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan"), float("nan")
    return statistics.fmean(values), min(values), max(values)


def summarize_variants(rows: List[Dict], metric: str = "AP", reference: str = "full") -> List[Dict]:
    """Per variant (in the order first seen in ``rows``, each row one run with its ``seed``): ``seeds`` (the runs
    with a value of ``metric``: NaN, e.g. APl on a test set without large objects, is no value; a model that detected
    nothing scores 0 and counts) of ``runs``, mean, min and max of ``metric`` over them; against ``reference``,
    over the ``paired_seeds`` both have a value for (a run still running elsewhere, or other ``--seeds``, leaves a
    seed unpaired: its AP says as much about the seed as about the variant), the mean ``difference`` (NaN when they
    share none) and whether it exceeds the seed spread: True when the two variants' ranges over those seeds do not
    overlap, False when they do, None when fewer than two seeds are shared (no spread to compare); ``compared``: the
    two ranges and the seeds of that verdict (``(low, high)``, ``(reference_low, reference_high)``, seeds), else None;
    ``has_reference``: whether ``rows`` hold ``reference`` at all."""
    by_variant: Dict[str, Dict[int, float]] = {}
    runs: Dict[str, int] = {}
    for row in rows:
        runs[row["variant"]] = runs.get(row["variant"], 0) + 1
        value = float(row[metric])
        values = by_variant.setdefault(row["variant"], {})
        if not math.isnan(value):
            values[row["seed"]] = value
    summary = []
    for variant, values in by_variant.items():
        mean, low, high = _mean_and_range(list(values.values()))
        entry = {"variant": variant, "seeds": len(values), "runs": runs[variant], "mean": mean, "min": low,
                 "max": high, "paired_seeds": 0, "difference": float("nan"), "exceeds_seed_spread": None,
                 "compared": None, "has_reference": reference in by_variant}
        if reference in by_variant and variant != reference:
            shared = sorted(set(values) & set(by_variant[reference]))
            mine, theirs = [values[s] for s in shared], [by_variant[reference][s] for s in shared]
            entry["paired_seeds"] = len(shared)
            if shared:
                entry["difference"] = statistics.fmean(mine) - statistics.fmean(theirs)
            if len(shared) >= 2:
                entry["exceeds_seed_spread"] = max(mine) < min(theirs) or min(mine) > max(theirs)
                entry["compared"] = ((min(mine), max(mine)), (min(theirs), max(theirs)), shared)
        summary.append(entry)
    return summary


def write_csv(rows: List[Dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _number(value, digits=2):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _seed_list(seeds: List[int]) -> str:
    """"1-3" for consecutive seeds, else "1, 3"."""
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(seed) for seed in seeds)


def _verdict(entry):
    """Whether the difference exceeds the seed spread, with the ranges compared (over the shared seeds, which the
    row's min-max, over all the variant's seeds, need not be): "yes (12.00-13.00 vs 10.00-11.00, seeds 1-2)"."""
    if entry["variant"] == "full":
        return "reference"
    if not entry["has_reference"]:
        return "n/a (no full in this study)"
    if entry["compared"] is None:
        return "n/a (needs 2 shared seeds)"
    (low, high), (full_low, full_high), seeds = entry["compared"]
    ranges = f"{low:.2f}-{high:.2f} vs {full_low:.2f}-{full_high:.2f}, seeds {_seed_list(seeds)}"
    return f"yes ({ranges})" if entry["exceeds_seed_spread"] else f"no, within seed spread ({ranges})"


def _difference(entry):
    """The paired difference and the seeds it is over: "+0.05 (2 seeds)"; "n/a (no seed in common)"."""
    if entry["variant"] == "full":
        return "n/a"
    if not entry["has_reference"]:
        return "n/a (no full in this study)"
    if not entry["paired_seeds"]:
        return "n/a (no seed in common)"
    count = entry["paired_seeds"]
    return f"{entry['difference']:+.2f} ({count} seed{'s' if count > 1 else ''})"


def _mean_of(rows, variant, key):
    values = [float(r[key]) for r in rows if r["variant"] == variant and r.get(key) not in ("", None)]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def _listed(overrides: Sequence[str]) -> str:
    return " ".join(f"`{o}`" for o in overrides) or "none"


def _seeds(entry: Dict) -> str:
    """The seeds a summary stands on: "2", or "1 of 2" when a run's metric is NaN (no detections)."""
    return str(entry["seeds"]) if entry["seeds"] == entry["runs"] else f"{entry['seeds']} of {entry['runs']}"


def write_markdown(rows: List[Dict], overrides: Dict[str, List[str]], path: str, title: str,
                   shared_overrides: Sequence[str] = ()) -> None:
    """``overrides``: variant -> its ``key=value`` overrides, printed with ``shared_overrides`` (the user's, given to
    every variant after the variant's own) so any variant can be trained by hand."""
    lines = [f"# {title}", "", "| variant | seeds | AP mean | AP min-max | AP50 mean | difference to full (AP) | "
             "exceeds seed spread | GFLOPs | latency ms | train min | recall / small / precision, last layer |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    ap50 = {e["variant"]: e for e in summarize_variants(rows, "AP50")}
    for entry in summarize_variants(rows, "AP"):
        variant = entry["variant"]
        means = {key: _mean_of(rows, variant, key) for key in ("gflops", "latency_ms", "train_minutes") + SELECTION_KEYS}
        lines.append(
            f"| {variant} | {_seeds(entry)} | {_number(entry['mean'])} | {_number(entry['min'])}-"
            f"{_number(entry['max'])} | {_number(ap50[variant]['mean'])} | {_difference(entry)} | "
            f"{_verdict(entry)} | {_number(means['gflops'], 3)} | {_number(means['latency_ms'], 1)} | "
            f"{_number(means['train_minutes'], 1)} | " + " / ".join(_number(means[key], 1) for key in SELECTION_KEYS)
            + " |"
        )
    lines += ["", "Differences to `full` are over the seeds both variants have (paired: the same seed's runs "
              "subtracted, the mean of that), and a difference exceeds the seed spread when the variant's AP range "
              "over those seeds does not overlap `full`'s. Latency: batch 1, median over interleaved rounds (every "
              "model once per round). The last columns: the last encoder layer's kept tokens against ground truth "
              "(percent; docs/training.md): share of objects with a kept token inside, of small objects, and share "
              "of kept tokens inside an object.", "",
              "## Overrides", "", f"- every variant (given after the variant's own): {_listed(shared_overrides)}"]
    for variant, variant_overrides in overrides.items():
        lines.append(f"- `{variant}` ({VARIANTS[variant]}): {_listed(variant_overrides)}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_plot(rows: List[Dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize_variants(rows, "AP")
    axes_spec = [("gflops", "GFLOPs per image"), ("latency_ms", "latency (ms, batch 1)")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    colours = plt.get_cmap("tab10")
    for axis, (key, label) in zip(axes, axes_spec):
        xs = [_mean_of(rows, entry["variant"], key) for entry in summary]
        # variants with (nearly) the same cost would hide each other's error bars: spread them sideways a little
        nudge = 0.006 * (max(xs) - min(xs) if len(xs) > 1 and max(xs) > min(xs) else 1.0)
        for number, (entry, x) in enumerate(zip(summary, xs)):
            if math.isnan(x):
                continue
            x += nudge * (number - (len(summary) - 1) / 2)
            error = [[entry["mean"] - entry["min"]], [entry["max"] - entry["mean"]]]
            axis.errorbar([x], [entry["mean"]], yerr=error, fmt="o", capsize=4, color=colours(number % 10),
                          label=f"{entry['variant']} ({_seeds(entry)} seed{'s' if entry['runs'] > 1 else ''})")
        axis.set_xlabel(label + " (markers nudged sideways to stay apart)")
        axis.set_ylabel("COCO AP (mean; bars: min-max over seeds)")
        axis.grid(alpha=0.3)
    axes[0].set_title("AP vs GFLOPs")
    axes[1].set_title("AP vs latency")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
