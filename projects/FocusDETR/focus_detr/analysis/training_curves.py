"""Training curves from detectron2's ``metrics.json`` (its JSONWriter appends one JSON object of scalars per logged
iteration): total loss, the main loss components, the learning rate and the periodic COCO AP, drawn to one PNG."""
import contextlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

from ..engine.metrics_log import METRICS_FILE

__all__ = ["MetricsFileError", "TrainingMetrics", "is_device_path", "loss_components", "metrics_path",
           "plot_training_curves", "read_metrics"]

# per decoder layer (loss_bbox_0), denoising (loss_class_dn), encoder proposals (loss_giou_enc): auxiliary copies of
# the main components, which would crowd the plot
_AUXILIARY = re.compile(r"_(\d+|dn|dn_\d+|enc|enc_\d+)$")
AP_KEYS = ("bbox/AP", "bbox/AP50")
_FLOAT32_MAX = 3.4028234663852886e38  # training logs float32 values: none is larger


class MetricsFileError(ValueError):
    """A metrics file that cannot be drawn (missing, empty, not detectron2's format); the message is one line."""


@dataclass
class TrainingMetrics:
    """``records``: one dict per logged iteration, in iteration order. ``warning``: one line about skipped lines (an
    incomplete last line: a run still writing; other lines that are not JSON: records cut short), else None."""

    path: str
    records: List[Dict]
    warning: Optional[str] = None

    def series(self, key: str):
        """(iterations, values) of the records that hold a number for ``key``: not a bool, and within float32's
        range (no training logs more; 1e308 stopped matplotlib with "arange: cannot compute length"), NaN kept."""
        rows = [(r["iteration"], r[key]) for r in self.records if _plottable(r.get(key))]
        return [i for i, _ in rows], [v for _, v in rows]


def _plottable(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (math.isnan(value) or abs(value) <= _FLOAT32_MAX))


def metrics_path(output: str) -> str:
    """``output/metrics.json`` for a training output folder; ``output`` itself when it names a file."""
    return os.path.join(output, METRICS_FILE) if os.path.isdir(output) else output


def _parse_line(line: str, number: int, path: str) -> Dict:
    try:
        record = json.loads(line)  # JSONDecodeError is handled by the caller
    except json.JSONDecodeError:
        raise
    except ValueError as error:  # e.g. an integer of more than 4300 digits, which Python will not read
        raise MetricsFileError(f"{path} line {number} cannot be read ({error}): not a detectron2 metrics.json"
                               ) from None
    # true is no iteration; a negative one took every record before it for a resume's
    if not isinstance(record, dict) or type(record.get("iteration")) is not int or record["iteration"] < 0:
        raise MetricsFileError(f"{path} line {number} is not a metrics record (a JSON object with an integer "
                               "'iteration' >= 0): not a detectron2 metrics.json")
    return record


def _skipped_lines_warning(path: str, line_count: int, not_json: List[int], incomplete_last: Optional[int]):
    warnings = []
    if incomplete_last is not None:
        warnings.append(f"skipped the incomplete last line ({incomplete_last}) of {path}: still being written?")
    if not_json:
        numbers = ", ".join(str(n) for n in not_json[:5]) + (", ..." if len(not_json) > 5 else "")
        warnings.append(f"skipped {len(not_json)} of {line_count} lines of {path}: not JSON (line {numbers}; records "
                        "cut short by a crash or a full disk?)")
    return "; ".join(warnings) or None


def read_metrics(path: str) -> TrainingMetrics:
    """The records of a detectron2 ``metrics.json``. Records of one iteration are merged (the periodic evaluation
    may be written apart from the losses); when the iterations go back (a resumed run logs again from its
    checkpoint), the later records replace the earlier ones from that iteration on. Lines that are not JSON are
    skipped with a warning: an incomplete last line (a run still writing; the line a resume cuts off, see
    :mod:`focus_detr.engine.metrics_log`), other lines (records cut short before a resume that appended to them).
    A file without any record, or with a line that is JSON but not a record, raises :class:`MetricsFileError`."""
    if not os.path.isfile(path):
        if os.path.exists(path):  # a folder, a pipe, a device
            raise MetricsFileError(f"{path} is not a regular file: not a detectron2 metrics.json")
        raise MetricsFileError(f"{path}: no such file (training writes {METRICS_FILE} into train.output_dir)")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError:
        raise MetricsFileError(f"{path} is not a text file: not a detectron2 metrics.json") from None
    if not lines:
        raise MetricsFileError(f"{path} is empty: no iteration logged yet (the first line comes after "
                               "train.log_period iterations)")
    records, not_json, first_error, incomplete_last = [], [], None, None
    for index, (number, line) in enumerate(lines):
        try:
            record = _parse_line(line, number, path)
        except RecursionError:  # nested beyond the parser's depth: nothing detectron2 writes
            raise MetricsFileError(f"{path} line {number} is nested too deeply: not a detectron2 metrics.json") from None
        except json.JSONDecodeError as error:
            if index == len(lines) - 1 and not line.endswith("\n"):
                incomplete_last = number
            else:
                not_json.append(number)
                first_error = first_error or f"{path} line {number} is not JSON ({error.msg})"
            continue
        if records and records[-1]["iteration"] > record["iteration"]:  # resumed: logged again from its checkpoint
            while records and records[-1]["iteration"] >= record["iteration"]:
                records.pop()
        if records and records[-1]["iteration"] == record["iteration"]:
            records[-1].update(record)
        else:
            records.append(record)
    if not records and first_error:
        raise MetricsFileError(f"{first_error}: not a detectron2 metrics.json")
    if not records:
        raise MetricsFileError(f"{path} holds no complete record yet (its only line is incomplete)")
    return TrainingMetrics(path, records, _skipped_lines_warning(path, len(lines), not_json, incomplete_last))


def loss_components(metrics: TrainingMetrics) -> List[str]:
    """The losses that make up ``total_loss`` at the final stage (``loss_class``, ``loss_bbox``, ``loss_giou``,
    ``select_loss``, ...), without their per-layer, denoising and encoder copies."""
    keys = {key for record in metrics.records for key in record}
    return sorted(k for k in keys if (k.startswith("loss") or k.endswith("_loss")) and k != "total_loss"
                  and not _AUXILIARY.search(k))


def _note(axis, text):
    axis.text(0.5, 0.5, text, ha="center", va="center", transform=axis.transAxes, color="0.4", fontsize=9, wrap=True)


def _marker(values):
    """A dot for a series of one value (a run shorter than train.log_period), which a line alone leaves unseen."""
    return "o" if len(values) == 1 else None


def _plot_ap(axis, metrics: TrainingMetrics) -> None:
    drawn = False
    for key, color in zip(AP_KEYS, ("tab:blue", "tab:orange")):
        iterations, values = metrics.series(key)
        if not any(math.isfinite(v) for v in values):
            continue
        drawn = True
        axis.plot(iterations, values, "o-", color=color, label=key.split("/")[1])
        if len(values) <= 12:
            for iteration, value in zip(iterations, values):
                axis.annotate(f"{value:.1f}", (iteration, value), textcoords="offset points", xytext=(0, 6),
                              ha="center", fontsize=8, color=color)
    axis.set_title("COCO box AP on the test set (periodic evaluation)")
    if drawn:
        axis.set_ylabel("AP (%)")
        axis.set_ylim(bottom=0, top=max(axis.get_ylim()[1] * 1.15, 1.0))
        axis.legend(fontsize=8, loc="lower right")
    else:
        axis.set_yticks([])
        _note(axis, "no evaluation in this log\n(train.eval_period sets how often training evaluates)")


def is_device_path(path: str) -> bool:
    """Whether ``path`` is in /dev (/dev/null, /dev/stdout): a picture goes there as named, and is never removed."""
    return os.path.dirname(os.path.abspath(path)) == "/dev"


def plot_training_curves(metrics: TrainingMetrics, png_path: str, title: Optional[str] = None) -> str:
    """Draws total loss, the main loss components, the learning rate and the periodic AP (each panel says when its
    values are not in the log) against the iteration into ``png_path``; returns ``png_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    (total_axis, parts_axis), (lr_axis, ap_axis) = axes
    iterations, values = metrics.series("total_loss")
    total_axis.set_title("total loss (every term: all decoder layers, denoising, encoder)")
    if values:
        total_axis.plot(iterations, values, color="black", linewidth=1.2, marker=_marker(values))
    else:
        _note(total_axis, "no total_loss in this log")

    parts_axis.set_title("main loss terms (without per-layer, denoising, encoder copies)")
    components = loss_components(metrics)
    for key in components:
        iterations, values = metrics.series(key)
        parts_axis.plot(iterations, values, linewidth=1.2, label=key, marker=_marker(values))
    if components:
        parts_axis.legend(fontsize=8, loc="upper right")
    else:
        _note(parts_axis, "no loss components in this log")

    lr_axis.set_title("learning rate")
    iterations, values = metrics.series("lr")
    if values:
        lr_axis.plot(iterations, values, color="tab:green", linewidth=1.2, marker=_marker(values))
        lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        lr_axis.set_ylim(bottom=0)
    else:
        _note(lr_axis, "no lr in this log")

    _plot_ap(ap_axis, metrics)
    for axis in axes.flat:
        axis.grid(alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("iteration")
        axis.tick_params(labelbottom=True)
    last = metrics.records[-1]["iteration"]
    fig.suptitle(title or f"{metrics.path} ({len(metrics.records)} logged iterations, the last {last})", fontsize=11)
    fig.tight_layout()
    try:
        with open(png_path, "wb") as picture_file:  # a file there stays when this cannot open it
            try:
                fig.savefig(picture_file, format=os.path.splitext(png_path)[1][1:] or "png", dpi=110)
            except BaseException:
                # cut short (a full disk): no picture left under its name; never a device (/dev/stdout, a link,
                # into a closed pipe)
                if not is_device_path(png_path) and (os.path.isfile(png_path) or os.path.islink(png_path)):
                    with contextlib.suppress(OSError):
                        os.remove(png_path)
                raise
    finally:
        plt.close(fig)
    return png_path
