"""The accuracy / efficiency trade-off of one trained model over keep-ratio settings: COCO AP, GFLOPs and latency
per setting (latency timed interleaved across settings), as rows, a CSV and a plot, in keep-ratio order."""
import contextlib
import csv
import os
import statistics
from typing import Dict, List, Optional, Sequence

from ..engine.evaluation import evaluate
from .flops import count_flops
from .keep_ratios import KeepRatioSetting, interleaved_latencies
from .timing import median_ratio

__all__ = ["CSV_COLUMNS", "MIN_LATENCY_REPEATS", "is_setting_folder", "setting_folder", "sweep_keep_ratios",
           "write_sweep_csv", "write_sweep_plot"]

CSV_COLUMNS = ["setting", "keep_ratio", "cascade_keep_ratios", "AP", "AP50", "AP75", "gflops", "latency_ms",
               "latency_vs_dense", "latency_repeats"]
# A median over fewer interleaved rounds is too noisy to order settings whose latencies differ by a few percent.
MIN_LATENCY_REPEATS = 5


def setting_folder(setting: KeepRatioSetting) -> str:
    """The name of the folder a setting's evaluation files go to: ``keep 0.3`` -> ``keep_0.3``, ``dense``."""
    return setting.name.replace(" ", "_")


def is_setting_folder(name: str) -> bool:
    """Whether ``name`` is one :func:`setting_folder` gives (of any keep ratio)."""
    return name == "dense" or name.startswith("keep_")


@contextlib.contextmanager
def _evaluator_output(cfg, output_dir: Optional[str], setting: KeepRatioSetting):
    """Points ``cfg``'s evaluator at ``<output_dir>/<setting folder>`` for the block: each setting's detections
    (``coco_instances_results.json``, ``instances_predictions.pth``) in a folder of its own, none overwritten by the
    next setting's. None, or no evaluator: the config's folder."""
    evaluator = cfg.dataloader.get("evaluator", None)
    if output_dir is None or evaluator is None:
        yield
        return
    configured = evaluator.get("output_dir", None)
    evaluator.output_dir = os.path.join(output_dir, setting_folder(setting))
    try:
        yield
    finally:
        evaluator.output_dir = configured


def sweep_keep_ratios(
    cfg,
    model,
    settings: Sequence[KeepRatioSetting],
    flop_inputs: List[Dict],
    latency_inputs: List[Dict],
    device,
    warmup: int = 2,
    repeats: int = MIN_LATENCY_REPEATS,
    amp_dtype=None,
    output_dir: Optional[str] = None,
) -> List[Dict]:
    """One row per setting (in the order given): AP / AP50 / AP75 of ``cfg``'s evaluation, GFLOPs (mean over
    ``flop_inputs``), the median batch-1 latency over ``repeats`` interleaved rounds cycling through
    ``latency_inputs`` (empty: no latency, ``""`` in the row) and, with a ``dense`` setting, the median of the
    per-round ratios to its time (steadier than the milliseconds on a machine whose load drifts). With
    ``output_dir``, each setting's evaluator files go to ``<output_dir>/<setting_folder(setting)>``."""
    if latency_inputs and repeats < MIN_LATENCY_REPEATS:
        raise ValueError(f"latency needs at least {MIN_LATENCY_REPEATS} interleaved rounds per setting (a median), "
                         f"got {repeats}")
    rows = []
    for setting in settings:
        with setting.applied(model), _evaluator_output(cfg, output_dir, setting):
            metrics = evaluate(cfg, model).get("bbox", {})
            gflops = count_flops(model, flop_inputs).total / 1e9
        rows.append({
            "setting": setting.name,
            "keep_ratio": setting.keep_ratio,
            "cascade_keep_ratios": " ".join(f"{r:g}" for r in setting.cascade_keep_ratios),
            "AP": metrics.get("AP", float("nan")),
            "AP50": metrics.get("AP50", float("nan")),
            "AP75": metrics.get("AP75", float("nan")),
            "gflops": gflops,
            "latency_ms": "",
            "latency_vs_dense": "",
            "latency_repeats": "",
        })
    if latency_inputs:
        seconds = interleaved_latencies(model, settings, latency_inputs, device, warmup, repeats, amp_dtype)
        for row in rows:
            row["latency_ms"] = 1000 * statistics.median(seconds[row["setting"]])
            row["latency_repeats"] = repeats
            if "dense" in seconds:
                row["latency_vs_dense"] = median_ratio(seconds[row["setting"]], seconds["dense"])
    return rows


def write_sweep_csv(rows: List[Dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_sweep_plot(rows: List[Dict], path: str, title: str = "") -> None:
    """AP vs GFLOPs and, when measured, AP vs latency; points joined in the rows' (keep-ratio) order. With a dense
    row the latency axis is the ratio to dense (the median of per-round ratios, steadier than milliseconds on a
    loaded machine), each point labelled with its milliseconds too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("gflops", "GFLOPs per image (mean)", "AP vs GFLOPs", lambda row: row["setting"])]
    if all(row["latency_ms"] != "" for row in rows):
        rounds = f"{rows[0]['latency_repeats']} interleaved rounds"
        if all(row["latency_vs_dense"] != "" for row in rows):
            panels.append(("latency_vs_dense", f"batch-1 latency, x dense (median of per-round ratios, {rounds})",
                           "AP vs latency", lambda row: f"{row['setting']}, {row['latency_ms']:.0f} ms"))
        else:
            panels.append(("latency_ms", f"latency (ms, batch 1, median of {rounds})", "AP vs latency",
                           lambda row: row["setting"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.4), squeeze=False)
    for axis, (x_key, x_label, panel_title, label) in zip(axes[0], panels):
        axis.plot([row[x_key] for row in rows], [row["AP"] for row in rows], "-", color="tab:blue", alpha=0.5)
        for index, row in enumerate(rows):
            dense = row["setting"] == "dense"
            axis.plot(row[x_key], row["AP"], "s" if dense else "o", color="tab:red" if dense else "tab:blue")
            # neighbours in keep ratio often sit close: their labels alternate above and below
            axis.annotate(label(row), (row[x_key], row["AP"]), textcoords="offset points",
                          xytext=(5, 5 if index % 2 == 0 else -12), fontsize=8)
        axis.margins(x=0.1, y=0.12)  # room for the labels of the outermost points
        axis.set_xlabel(x_label, fontsize=9)
        axis.set_ylabel("COCO AP")
        axis.set_title(panel_title)
        axis.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
