"""tools/fault_drill.py: kill -9 training (also mid-checkpoint-write), resume, compare with an uninterrupted run."""
import json

import torch

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


def test_the_check_finds_temporary_torn_and_differing_files(tmp_path):
    drill = load_script("tools/fault_drill.py", "fault_drill")
    expected = {"model": {"w": torch.zeros(3)}, "iteration": 3}
    torch.save({"model": {"w": torch.tensor([0.0, 1e-30, 0.0])}, "iteration": 3}, tmp_path / "model_final.pth")
    torch.save(expected, tmp_path / "model_0000001.pth")
    torn = tmp_path / "model_0000001.pth"
    torn.write_bytes(torn.read_bytes()[:100])
    (tmp_path / ".model_0000001.pth.x1y2.tmp").write_bytes(b"half")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    problems = drill.check_output(str(tmp_path), expected)
    assert problems[0] == "temporary files left: .model_0000001.pth.x1y2.tmp"
    assert problems[1].startswith(f"torn checkpoint: cannot read checkpoint {torn}: the file is truncated")
    assert problems[2:] == [
        "final checkpoint differs from the uninterrupted run's in 1 entries (model.w)",
        "last_checkpoint names 'model_0000001.pth', not model_final.pth",
    ]
    assert drill.check_output(str(tmp_path / "none"), expected) == ["no model_final.pth"]
