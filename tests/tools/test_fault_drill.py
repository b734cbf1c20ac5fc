"""tools/fault_drill.py: kill -9 training (also mid-checkpoint-write), resume, compare with an uninterrupted run.
The checks it applies are tested in tests/engine/test_engine_fault_drill.py."""
import json

from tools_test_utils import load_script


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

