"""Training curves from metrics.json: records merged per iteration, a resumed run's later records kept, an
incomplete last line and lines cut short before a resume skipped with a warning, bad files refused in one line, and a
readable PNG written."""
import json
import math
import os

import pytest
from PIL import Image

from focus_detr.analysis.training_curves import (
    MetricsFileError,
    loss_components,
    metrics_path,
    plot_training_curves,
    read_metrics,
)


def _training_record(iteration, loss=10.0):
    return {"iteration": iteration, "total_loss": loss, "loss_class": loss / 40, "loss_bbox": loss / 30,
            "loss_giou": loss / 12, "loss_class_0": 1.0, "loss_bbox_dn": 1.0, "loss_giou_dn_1": 1.0,
            "loss_class_enc": 1.0, "select_loss": loss / 50, "lr": 1e-4 * min(1.0, iteration / 40), "time": 0.5}


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_records_merge_per_iteration_and_a_resumed_run_replaces_the_later_ones(tmp_path):
    records = [_training_record(i, 20 - i / 10) for i in (19, 39, 59, 79)]
    evaluation = {"iteration": 59, "bbox/AP": 3.0, "bbox/AP50": 9.0, "bbox/APl": math.nan}
    first_run = records[:3] + [evaluation] + records[3:]
    resumed = [_training_record(i, 5.0) for i in (59, 79)]  # interrupted after 79, resumed from the checkpoint at 40
    metrics = read_metrics(str(_write(tmp_path / "metrics.json", first_run + resumed)))
    assert [r["iteration"] for r in metrics.records] == [19, 39, 59, 79]
    assert metrics.series("total_loss")[1] == [18.1, 16.1, 5.0, 5.0]
    assert metrics.series("bbox/AP") == ([], [])  # the first run's evaluation at 59 went with its iteration 59
    assert metrics.warning is None
    merged = read_metrics(str(_write(tmp_path / "m2.json", first_run)))
    assert merged.series("bbox/AP") == ([59], [3.0]) and merged.records[2]["total_loss"] == records[2]["total_loss"]
    assert loss_components(merged) == ["loss_bbox", "loss_class", "loss_giou", "select_loss"]


def test_incomplete_last_line_is_skipped_with_a_warning(tmp_path):
    path = _write(tmp_path / "metrics.json", [_training_record(19), _training_record(39)], tail='{"iteration": 59, "total_lo')
    metrics = read_metrics(str(path))
    assert [r["iteration"] for r in metrics.records] == [19, 39]
    assert "incomplete last line (3)" in metrics.warning and "\n" not in metrics.warning


def test_lines_cut_short_before_a_resume_are_skipped_with_one_warning(tmp_path):
    # a crash left line 2 cut short, and the resumed run appended its first record to it (before the fix in
    # focus_detr.engine.metrics_log); the whole file used to be refused
    merged = '{"data_time": 0.01, "iterati' + json.dumps(_training_record(59))
    path = _write(tmp_path / "metrics.json", [_training_record(19)], merged + "\n" + json.dumps(_training_record(79))
                  + "\nnot json either\n" + json.dumps(_training_record(99)) + "\n" + '{"iteration": 119, "tot')
    metrics = read_metrics(str(path))
    assert [r["iteration"] for r in metrics.records] == [19, 79, 99]
    assert "\n" not in metrics.warning and str(path) in metrics.warning
    assert "incomplete last line (6)" in metrics.warning and "skipped 2 of 6 lines" in metrics.warning
    assert "(line 2, 4;" in metrics.warning


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("", "is empty: no iteration logged yet"),
    ("\n  \n", "is empty"),
    ('{"iteration": 1, "total_lo', "holds no complete record yet"),
    ("not json\nnor this\n", "line 1 is not JSON"),  # no record at all: not a metrics.json
    ('{"iteration": 1}\n[1, 2]\n', "line 2 is not a metrics record"),
    ('{"total_loss": 1.0}\n', "line 1 is not a metrics record"),
    ('{"iteration": true, "total_loss": 1.0}\n', "line 1 is not a metrics record"),  # was "the last True"
    (b"\x89PNG\r\n\x1a\n\xff\xfe", "is not a text file"),
    ("[" * 100_000 + "\n", "line 1 is nested too deeply"),
    # Python's digit limit: one line naming neither the file nor the line
    ('{"iteration": 1, "total_loss": ' + "9" * 5000 + "}\n", r"line 1 cannot be read \(Exceeds the limit"),
    # taken for a resume's restart: every record before it was dropped, the plot showed one iteration
    ('{"iteration": 1}\n{"iteration": 2}\n{"iteration": -5}\n', "line 3 is not a metrics record"),
    ("folder", "is not a regular file"),  # it said "no such file"
])
def test_bad_metrics_files_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "metrics.json"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(MetricsFileError, match=message) as info:
        read_metrics(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_values_that_are_no_logged_numbers_are_not_plotted(tmp_path):
    # 1e308 stopped matplotlib ("arange: cannot compute length"); a bool counted as 1
    records = [_training_record(19), dict(_training_record(39), total_loss=1e308), dict(_training_record(59), lr=True),
               dict(_training_record(79), total_loss=math.nan)]
    metrics = read_metrics(str(_write(tmp_path / "metrics.json", records)))
    assert metrics.series("total_loss")[0] == [19, 59, 79] and metrics.series("lr")[0] == [19, 39, 79]
    plot_training_curves(metrics, str(tmp_path / "curves.png"))


def test_curves_png_is_written_with_and_without_evaluations(tmp_path):
    records = [_training_record(i, 20 - i / 100) for i in range(19, 900, 20)]
    records += [{"iteration": 450, "bbox/AP": 2.5, "bbox/AP50": 9.0}, {"iteration": 900, "bbox/AP": 5.2, "bbox/AP50": 17.8}]
    _write(tmp_path / "metrics.json", sorted(records, key=lambda r: r["iteration"]))
    assert metrics_path(str(tmp_path)) == str(tmp_path / "metrics.json")
    assert metrics_path(str(tmp_path / "metrics.json")) == str(tmp_path / "metrics.json")
    for name, metrics in (("with_ap.png", read_metrics(str(tmp_path / "metrics.json"))),
                          ("without_ap.png", read_metrics(str(_write(tmp_path / "train_only.json", records[:-2]))))):
        png = plot_training_curves(metrics, str(tmp_path / name))
        with Image.open(png) as picture:
            assert picture.format == "PNG" and picture.size[0] >= 1000 and picture.size[1] >= 700, picture.size
        assert 20_000 < (tmp_path / name).stat().st_size < 1_000_000


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full to fill the disk with")
def test_a_picture_cut_short_by_a_full_disk_is_not_left_under_its_name(tmp_path):
    # a 1 MiB disk kept the first 64 KB of the picture as curves.png, beside the error
    metrics = read_metrics(str(_write(tmp_path / "metrics.json", [_training_record(i) for i in range(19, 200, 20)])))
    (tmp_path / "curves.png").symlink_to("/dev/full")  # every write there fails with "No space left on device"
    with pytest.raises(OSError):
        plot_training_curves(metrics, str(tmp_path / "curves.png"))
    assert not os.path.lexists(tmp_path / "curves.png")


def test_a_series_of_one_logged_value_is_drawn(tmp_path):
    # a run shorter than train.log_period logs once: a line through one point drew nothing (an empty lr panel)
    metrics = read_metrics(str(_write(tmp_path / "metrics.json", [_training_record(3)])))
    with Image.open(plot_training_curves(metrics, str(tmp_path / "curves.png"))) as picture:
        width, height = picture.size
        lr_panel = picture.convert("RGB").crop((0, height // 2, width // 2, height))  # bottom left: nothing else there
        green = sum(count for count, (r, g, b) in lr_panel.getcolors(width * height)
                    if abs(r - 44) + abs(g - 160) + abs(b - 44) < 30)  # tab:green, the learning rate's colour
    assert green > 20
