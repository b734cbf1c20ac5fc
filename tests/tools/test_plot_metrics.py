"""tools/plot_metrics.py: a run's folder (or its metrics.json) -> training_curves.png; bad input -> one line."""
import json

from PIL import Image

from tools_test_utils import load_script

plot_metrics = load_script("tools/plot_metrics.py", "plot_metrics")


def _run(argv, capfd):
    code = plot_metrics.run_reporting_errors(plot_metrics.main, plot_metrics.parse_args(argv))
    out, err = capfd.readouterr()
    return code, out.strip().splitlines(), err.strip().splitlines()


def test_curves_of_a_run_folder_and_of_a_run_still_writing(tmp_path, capfd):
    lines = [json.dumps({"iteration": i, "total_loss": 20 - i / 100, "loss_class": 0.5, "lr": 1e-4}) for i in range(19, 400, 20)]
    (tmp_path / "metrics.json").write_text("\n".join(lines) + '\n{"iteration": 419, "tot')
    code, out, err = _run([str(tmp_path)], capfd)
    assert code == 0 and out == [f"wrote {tmp_path / 'training_curves.png'} (20 logged iterations, the last 399)"]
    assert len(err) == 1 and err[0].startswith("warning: skipped the incomplete last line (21)")
    with Image.open(tmp_path / "training_curves.png") as picture:
        assert picture.format == "PNG" and picture.size[0] >= 1000
    code, out, _ = _run([str(tmp_path / "metrics.json"), "--output", str(tmp_path / "curves.png")], capfd)
    assert code == 0 and (tmp_path / "curves.png").stat().st_size > 20_000


def test_missing_and_empty_logs_are_one_line(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.json").write_text("")
    for folder, message in ((tmp_path / "nothing", "no such file"), (tmp_path / "empty", "is empty")):
        code, out, err = _run([str(folder)], capfd)
        assert code == 2 and out == [] and len(err) == 1, err
        assert err[0].startswith("error: ") and message in err[0]
    assert not list(tmp_path.rglob("*.png"))


def test_a_log_with_a_line_cut_short_before_a_resume_is_drawn_with_one_warning(tmp_path, capfd):
    lines = [json.dumps({"iteration": i, "total_loss": 2.0, "lr": 1e-4}) for i in (0, 1, 2, 3)]
    lines[2] = '{"data_time": 0.01, "iterati' + lines[2]  # torn by a crash, then appended to by the resumed run
    (tmp_path / "metrics.json").write_text("\n".join(lines) + "\n")
    code, out, err = _run([str(tmp_path)], capfd)
    assert code == 0 and out == [f"wrote {tmp_path / 'training_curves.png'} (3 logged iterations, the last 3)"]
    assert len(err) == 1 and err[0].startswith("warning: skipped 1 of 4 lines of ") and "(line 3;" in err[0]


def test_the_file_written_is_the_one_reported(tmp_path, capfd):
    (tmp_path / "metrics.json").write_text(json.dumps({"iteration": 0, "total_loss": 2.0}) + "\n")
    code, out, _ = _run([str(tmp_path), "--output", str(tmp_path / "curves" / "mixed")], capfd)
    assert code == 0 and out[0].startswith(f"wrote {tmp_path / 'curves' / 'mixed.png'} ")  # was: ".../mixed"
    assert [p.name for p in (tmp_path / "curves").iterdir()] == ["mixed.png"]
    code, out, _ = _run([str(tmp_path), "--output", str(tmp_path / "curves" / "mixed.svg")], capfd)
    assert code == 0 and out[0].startswith(f"wrote {tmp_path / 'curves' / 'mixed.svg'} ")
    assert (tmp_path / "curves" / "mixed.svg").read_text().lstrip().startswith("<?xml")


def test_a_folder_gets_the_default_name_and_a_device_is_written_as_named(tmp_path, capfd):
    (tmp_path / "metrics.json").write_text(json.dumps({"iteration": 0, "total_loss": 2.0}) + "\n")
    (tmp_path / "pictures").mkdir()
    code, out, _ = _run([str(tmp_path), "--output", str(tmp_path / "pictures")], capfd)
    assert code == 0 and out[0].startswith(f"wrote {tmp_path / 'pictures' / 'training_curves.png'} ")  # was: .png
    assert [p.name for p in (tmp_path / "pictures").iterdir()] == ["training_curves.png"]
    code, out, err = _run([str(tmp_path), "--output", "/dev/null"], capfd)
    assert code == 0 and out == [] and err[0].startswith("wrote /dev/null ")  # was: /dev/null.png, a new file in /dev


def test_a_metrics_file_named_from_its_own_folder_gets_the_default_picture(tmp_path, capfd, monkeypatch):
    (tmp_path / "metrics.json").write_text(json.dumps({"iteration": 0, "total_loss": 2.0}) + "\n")
    monkeypatch.chdir(tmp_path)
    code, out, _ = _run(["metrics.json"], capfd)
    assert code == 0 and out[0].startswith("wrote training_curves.png ") and (tmp_path / "training_curves.png").is_file()
