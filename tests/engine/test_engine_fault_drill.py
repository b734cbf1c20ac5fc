"""focus_detr.engine.fault_drill: the checks a drill applies to a resumed run's folder and final checkpoint."""
import os

import torch

from focus_detr.engine.fault_drill import check_output, checkpoint_differences, save_names
from focus_detr.engine.training_process import TrainingCommand


def test_the_check_finds_temporary_torn_and_differing_files(tmp_path):
    expected = {"model": {"w": torch.zeros(3)}, "iteration": 3}
    torch.save({"model": {"w": torch.tensor([0.0, 1e-30, 0.0])}, "iteration": 3}, tmp_path / "model_final.pth")
    torch.save(expected, tmp_path / "model_0000001.pth")
    torn = tmp_path / "model_0000001.pth"
    torn.write_bytes(torn.read_bytes()[:100])
    (tmp_path / ".model_0000001.pth.x1y2.tmp").write_bytes(b"half")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    problems = check_output(str(tmp_path), expected)
    assert problems[0] == "temporary files left: .model_0000001.pth.x1y2.tmp"
    assert problems[1].startswith(f"torn checkpoint: cannot read checkpoint {torn}: the file is truncated")
    assert problems[2:] == [
        "final checkpoint differs from the uninterrupted run's in 1 entries (model.w)",
        "last_checkpoint names 'model_0000001.pth', not model_final.pth",
    ]
    assert check_output(str(tmp_path / "none"), expected) == ["no model_final.pth"]


def test_a_clean_folder_with_an_equal_final_checkpoint_passes(tmp_path):
    expected = {"model": {"w": torch.arange(3.0)}, "rank_states": [{"rng": {"python": (3, (1, 2), None)}}]}
    torch.save(expected, tmp_path / "model_final.pth")
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    assert check_output(str(tmp_path), expected) == []


def test_checkpoints_must_match_bit_for_bit_in_dtype_shape_keys_and_plain_values():
    base = {"model": {"w": torch.zeros(2, 2)}, "optimizer": {"state": [1, 2]}, "iteration": 7}
    assert checkpoint_differences(base, {"model": {"w": torch.zeros(2, 2)}, "optimizer": {"state": [1, 2]},
                                         "iteration": 7}) == []
    assert checkpoint_differences(base, dict(base, model={"w": torch.zeros(2, 2, dtype=torch.float64)})) == ["model.w"]
    assert checkpoint_differences(base, dict(base, model={"w": torch.zeros(4)})) == ["model.w"]
    assert checkpoint_differences(base, dict(base, model={"w": [0.0]})) == ["model.w"]
    assert checkpoint_differences(base, dict(base, model={"v": torch.zeros(2, 2)})) == ["model keys"]
    assert checkpoint_differences(base, dict(base, optimizer={"state": [1]})) == ["optimizer.state length"]
    assert checkpoint_differences(base, dict(base, optimizer={"state": [1, 3]}, iteration=8)) == [
        "optimizer.state.1", "iteration"]
    # bits, not values: -0.0 equals 0.0 as a number, NaN never equals itself
    assert checkpoint_differences({"w": torch.tensor([0.0])}, {"w": torch.tensor([-0.0])}) == ["w"]
    nan = torch.tensor([float("nan"), 1.0])
    assert checkpoint_differences({"w": nan, "s": torch.tensor(2.0)}, {"w": nan.clone(), "s": torch.tensor(2.0)}) == []


def test_the_saves_a_run_makes_are_every_period_and_the_final_one():
    assert save_names(8, 2) == [(1, "model_0000001.pth"), (3, "model_0000003.pth"), (5, "model_0000005.pth"),
                                (7, "model_final.pth")]
    assert save_names(4, 10) == [(3, "model_final.pth")]


def test_training_runs_work_where_the_caller_is_and_are_handed_absolute_paths(tmp_path, monkeypatch):
    # the runs worked in the repository: a relative path inside an override (train.init_checkpoint=w.pth) named a
    # file there, not the one the tool itself had read
    script = tmp_path / "print_where.py"
    script.write_text("import os, sys\nprint(os.getcwd())\nprint(sys.argv[1:])\n"
                      "print(os.environ['FOCUS_DETR_STOP_WITH_PARENT'])\n")
    monkeypatch.chdir(tmp_path)
    command = TrainingCommand("my_config.py", ["train.init_checkpoint=w.pth"], train_net=str(script))
    run = command.start("runs/a", str(tmp_path / "log.txt"), resume=True)
    assert run.process.wait() == 0
    assert (tmp_path / "log.txt").read_text().splitlines() == [
        str(tmp_path),
        str(["--config-file", str(tmp_path / "my_config.py"), "--resume", "train.init_checkpoint=w.pth",
             f"train.output_dir={tmp_path / 'runs' / 'a'}"]),
        str(os.getpid()),  # it stops when this process dies (focus_detr.child_processes)
    ]
