"""Resume survives what a crash leaves behind: a torn or corrupt checkpoint, a `last_checkpoint` that cannot be used,
stale temporary files; a refused resume leaves the run's config as it was. (A run that a failure stops mid-way:
test_engine_stopped_runs.py.)"""
import logging
import shutil

import pytest
import torch

from cli_output import error_lines
from engine_test_utils import TOY_CONFIG, load_checkpoint, toy_dataset, train_net, train_toy  # noqa: F401


def test_corrupt_last_checkpoint_falls_back_to_the_newest_readable_one(train_net, toy_dataset, tmp_path, caplog):
    full = tmp_path / "full"
    assert train_toy(train_net, full) == 0
    expected = load_checkpoint(full / "model_final.pth")["model"]

    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    final = crashed / "model_final.pth"
    final.write_bytes(final.read_bytes()[:1000])  # torn by something outside our atomic writes (disk, copy)
    log = logging.getLogger("focus_detr.engine.checkpoint")
    log.addHandler(caplog.handler)  # train_net's logger set-up stops propagation to the root logger
    try:
        assert train_toy(train_net, crashed, "--resume") == 0
    finally:
        log.removeHandler(caplog.handler)
    warnings = [r.getMessage() for r in caplog.records if r.name == "focus_detr.engine.checkpoint"]
    assert any(m.startswith(f"Resumed from {crashed / 'model_0000004.pth'}, the newest readable checkpoint, instead of: "
                            f"cannot read checkpoint {final}: the file is truncated or corrupt") for m in warnings)
    resumed = load_checkpoint(final)["model"]
    for name, value in expected.items():
        assert torch.equal(value, resumed[name]), name


@pytest.mark.parametrize("damage, problem", [
    # fvcore read any unreadable tag as "", which loaded nothing: training restarted at iteration 1 from random weights
    # (then a scheduler traceback)
    ("dangling link", "{tag} is not a regular file"),  # fvcore saw no tag: a new run overwrote the finished one
    ("empty", "{tag} is empty"),
    ("binary", "{tag} is not text (it holds the name of a checkpoint)"),
    # followed without a word: another run's weights and optimizer continued in this folder
    ("elsewhere", "{tag} names '{elsewhere}', not a file of {out} (it holds the name of one of its checkpoints)"),
    ("parent", "{tag} names '../full/model_0000004.pth', not a file of {out} (it holds the name of one of its "
               "checkpoints)"),
])
def test_a_last_checkpoint_that_cannot_be_used_resumes_from_the_folder_s_newest_checkpoint(
        train_net, toy_dataset, tmp_path, caplog, damage, problem):
    import os

    full = tmp_path / "full"
    assert train_toy(train_net, full, "train.max_iter=8", "train.checkpointer.period=4") == 0
    out = tmp_path / "out"
    shutil.copytree(full, out)
    os.utime(out / "model_final.pth", (1, 1))  # the newest checkpoint of the folder is then model_0000003.pth
    tag = out / "last_checkpoint"
    tag.unlink()
    elsewhere = full / "model_final.pth"
    if damage == "dangling link":
        tag.symlink_to(out / "model_0000009.pth")
    else:
        tag.write_bytes({"empty": b"", "binary": b"\x80\x81PK", "elsewhere": str(elsewhere).encode(),
                         "parent": b"../full/model_0000004.pth"}[damage])
    log = logging.getLogger("focus_detr.engine.checkpoint")
    log.addHandler(caplog.handler)  # train_net's logger set-up stops propagation to the root logger
    try:
        assert train_toy(train_net, out, "--resume", "train.max_iter=8", "train.checkpointer.period=4") == 0
    finally:
        log.removeHandler(caplog.handler)
    warnings = [r.getMessage() for r in caplog.records if r.name == "focus_detr.engine.checkpoint"]
    assert f"Resumed from {out / 'model_0000003.pth'}, the newest readable checkpoint, instead of: " + problem.format(
        tag=tag, elsewhere=elsewhere, out=out) in warnings
    resumed = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert resumed["iteration"] == 7  # continued from iteration 4, not restarted


def test_a_folder_in_place_of_last_checkpoint_is_one_line_for_a_new_run_and_a_resume(train_net, toy_dataset, tmp_path,
                                                                                       capsys):
    (tmp_path / "last_checkpoint").mkdir()  # a new run took it for no earlier run; a resume restarted at iteration 1
    assert train_toy(train_net, tmp_path, "--resume") == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: cannot resume from {tmp_path}: {tmp_path / 'last_checkpoint'} is a folder, where the run writes the "
        "name of its last checkpoint; remove that folder"]
    assert train_toy(train_net, tmp_path) == 2  # (it said to add --resume, which then said to remove the folder)
    assert error_lines(capsys.readouterr().err) == [
        f"error: train.output_dir {tmp_path} holds a folder named last_checkpoint, where a run writes the name of its "
        "last checkpoint: remove that folder"]


def test_a_tag_linked_to_dev_zero_is_read_no_further_than_a_file_name(tmp_path):
    # it was read until memory ran out; a child process with little memory, so that a regression cannot take the
    # suite's
    import subprocess
    import sys

    (tmp_path / "last_checkpoint").symlink_to("/dev/zero")
    code = ("import resource, sys\n"
            "from focus_detr.engine.checkpoint import read_checkpoint_tag\n"
            "size = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmSize'))\n"
            "resource.setrlimit(resource.RLIMIT_AS, ((size << 10) + (1 << 30),) * 2)  # 1 GiB more than imported\n"
            "print(read_checkpoint_tag(sys.argv[1]))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == repr((None, f"{tmp_path / 'last_checkpoint'} is not a regular file"))


def test_an_evaluation_reads_the_run_s_tag_only_for_resume(train_net, toy_dataset, tmp_path, capsys):
    # --eval-only of a named file failed on the folder's broken tag; --eval-only --resume had no fallback
    assert train_toy(train_net, tmp_path, "train.max_iter=4", "train.checkpointer.period=2") == 0
    (tmp_path / "last_checkpoint").write_text("")
    weights = tmp_path / "model_0000001.pth"
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path}",
                          f"train.init_checkpoint={weights}"]) == 0
    capsys.readouterr()
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", "--resume", f"train.output_dir={tmp_path}"]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: evaluating")] == [
        f"warning: evaluating {tmp_path / 'model_final.pth'}, the newest checkpoint of train.output_dir, instead of: "
        f"{tmp_path / 'last_checkpoint'} is empty"]


def test_no_readable_checkpoint_is_an_error_not_a_restart_from_zero(train_net, toy_dataset, tmp_path, capsys):
    assert train_toy(train_net, tmp_path, "train.max_iter=5", "train.checkpointer.period=100") == 0
    (tmp_path / "model_final.pth").write_bytes(b"")
    capsys.readouterr()
    assert train_toy(train_net, tmp_path, "--resume") == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: cannot resume from {tmp_path}: no readable checkpoint (cannot read checkpoint "
        f"{tmp_path / 'model_final.pth'}: the file is empty (0 bytes)); remove the folder's last_checkpoint to start "
        "from scratch"
    ]


def test_a_refused_resume_leaves_the_run_s_config_as_it_was(train_net, toy_dataset, tmp_path, capsys):
    # detectron2's set-up wrote the refused command's config.yaml (max_iter 4) beside weights trained with max_iter 2
    assert train_toy(train_net, tmp_path, "train.max_iter=2", "train.checkpointer.period=100") == 0
    before = (tmp_path / "config.yaml").read_bytes()
    (tmp_path / "model_final.pth").write_bytes(b"")
    assert train_toy(train_net, tmp_path, "--resume", "train.max_iter=4") == 2
    assert (tmp_path / "config.yaml").read_bytes() == before
    # a resume that trains writes its own
    (tmp_path / "model_final.pth").unlink()
    (tmp_path / "last_checkpoint").unlink()
    assert train_toy(train_net, tmp_path, "--resume", "train.max_iter=3") == 0
    assert "max_iter: 3" in (tmp_path / "config.yaml").read_text()


def test_temporary_files_of_a_killed_save_are_removed_at_start(train_net, toy_dataset, tmp_path):
    tmp_path.joinpath(".model_0000004.pth.k3j2_x.tmp").write_bytes(b"half a checkpoint")
    tmp_path.joinpath(".last_checkpoint.abc123.tmp").write_bytes(b"model_00")
    tmp_path.joinpath("notes.tmp").write_text("not ours: kept")
    assert train_toy(train_net, tmp_path, "train.max_iter=1") == 0
    assert not list(tmp_path.glob(".*.tmp"))
    assert tmp_path.joinpath("notes.tmp").exists()
