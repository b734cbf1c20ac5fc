"""tools/fault_drill.py: kill -9 training (also mid-checkpoint-write), resume, compare with an uninterrupted run.
The checks it applies are tested in tests/engine/test_engine_fault_drill.py."""
import json
import os
import tempfile

from focus_detr.engine.cli import run_reporting_errors
from tools_test_utils import REPO_ROOT, load_script


def test_two_trials_on_the_tree_config_resume_to_the_uninterrupted_weights(tmp_path, capsys):
    drill = load_script("tools/fault_drill.py", "fault_drill")
    report = tmp_path / "drill.json"
    # seed 0: trial 0 is killed at a step, trial 1 while a checkpoint is written (or right after it)
    argv = ["--trials", "2", "--max-kills", "1", "--seed", "0", "--output", str(tmp_path / "runs"),
            "--json", str(report), "train.max_iter=4"]
    assert drill.main(drill.parse_args(argv)) == 0
    result = json.loads(report.read_text())
    assert result["summary"]["trials"] == 2 and result["summary"]["failures"] == 0
    assert [[kill["kind"] for kill in trial["kills"]] for trial in result["trials"]] == [["step"], ["save"]]
    assert all(not kill["landed"].startswith("missed") for trial in result["trials"] for kill in trial["kills"])
    assert all(trial["ok"] and trial["problems"] == [] for trial in result["trials"])
    out = capsys.readouterr().out
    assert "fault drill: 2 trials, 0 failures" in out and out.count("| OK") == 2



def _stop_at_reference(drill, monkeypatch, seen):
    """Replaces the drill's first training run by a failure, keeping what it was given."""
    def failing_reference(command, folder):
        seen.update(command=command, folder=folder)
        raise ValueError("the uninterrupted run failed (exit 1): error: stopped by the test")

    monkeypatch.setattr(drill, "run_reference", failing_reference)


def test_relative_paths_mean_the_users_working_directory_also_for_the_runs(tmp_path, monkeypatch, capsys):
    drill = load_script("tools/fault_drill.py", "fault_drill")
    seen = {}
    _stop_at_reference(drill, monkeypatch, seen)
    monkeypatch.chdir(tmp_path)
    config = os.path.relpath(os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py"), tmp_path)
    args = drill.parse_args(["--config-file", config, "--output", "runs", "--trials", "1"])
    assert run_reporting_errors(drill.main, args) == 2
    assert capsys.readouterr().err.strip() == "error: the uninterrupted run failed (exit 1): error: stopped by the test"
    # the training runs work in the user's folder too, and are handed absolute paths of it
    argv = seen["command"].argv(os.path.join(seen["folder"], "reference"), resume=False)
    assert argv[argv.index("--config-file") + 1] == os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")
    assert argv[-1] == f"train.output_dir={tmp_path / 'runs' / 'reference'}"
    assert (tmp_path / "runs").is_dir()  # --output named by the user is kept


def test_an_unwritable_json_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
    drill = load_script("tools/fault_drill.py", "fault_drill")
    seen = {}
    _stop_at_reference(drill, monkeypatch, seen)
    (tmp_path / "a_file").write_text("")
    args = drill.parse_args(["--json", str(tmp_path / "a_file" / "drill.json"), "--output", str(tmp_path / "runs")])
    assert run_reporting_errors(drill.main, args) == 2
    assert capsys.readouterr().err.strip() == (f"error: the folder of --json {tmp_path / 'a_file'} cannot be created: "
                                               f"{tmp_path / 'a_file'} is a file, not a folder")
    assert not seen and not (tmp_path / "runs").exists()


def test_a_drill_that_fails_removes_its_temporary_folder(tmp_path, monkeypatch, capsys):
    drill = load_script("tools/fault_drill.py", "fault_drill")
    _stop_at_reference(drill, monkeypatch, {})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where prepare_runs_folder makes it
    assert run_reporting_errors(drill.main, drill.parse_args(["--trials", "1"])) == 2
    assert "stopped by the test" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
