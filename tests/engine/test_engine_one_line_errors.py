"""A user error is one line ``error: <what> <where>: <why>`` with exit status 2 and no traceback, with the
project's message intact; a bug keeps its traceback."""
import io
import os
import shlex
import sys

import pytest
import torch
from torch.multiprocessing.spawn import ProcessRaisedException

from cli_output import error_lines, logged_warnings, shows_traceback
from engine_test_utils import REPO_ROOT, TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)
from focus_detr.engine.cli import MAX_LINE_CHARS, is_out_of_memory, is_user_error, one_line, run_reporting_errors

TREES_CONFIG = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")


def _remote_traceback(exception_line, *more_lines):
    return "\n".join([
        "Traceback (most recent call last):",
        '  File "/x/runner.py", line 3, in run_training',
        "    raise error",
        exception_line,
        *more_lines,
    ])


def test_a_multi_line_message_keeps_the_projects_first_line():
    error = ValueError("cannot read checkpoint /w/model.pth: it is damaged\n\nCheck the documentation of torch.load.")
    assert one_line(error) == "cannot read checkpoint /w/model.pth: it is damaged Check the documentation of torch.load."


def test_a_message_too_long_for_one_line_keeps_its_end_which_says_why():
    # an output folder 4,078 characters long: "cannot access /tmp/bbb... (2178 more characters)", the reason cut off
    path = "/tmp/" + "b" * 4000 + "/.config.yaml.tmp"
    line = one_line(OSError(36, "File name too long", path))
    assert line.startswith("cannot access /tmp/bbb") and line.endswith("/.config.yaml.tmp: File name too long")
    assert " characters left out) ... " in line and len(line) <= MAX_LINE_CHARS


def test_an_error_from_a_spawned_process_is_reported_by_its_original_message():
    error = ProcessRaisedException(
        "\n\n-- Process 1 terminated with the following error:\n"
        + _remote_traceback("focus_detr.engine.config.ConfigError: wrong value for config key 'a.b': 'x' is not",
                            "a number (it is 1.0 now)"),
        error_index=1, error_pid=4242,
    )
    assert is_user_error(error)
    assert one_line(error) == "wrong value for config key 'a.b': 'x' is not a number (it is 1.0 now)"


def test_a_bug_in_a_spawned_process_keeps_its_traceback():
    error = ProcessRaisedException(
        "\n\n-- Process 0 terminated with the following error:\n"
        + _remote_traceback("TypeError: unsupported operand type(s) for +: 'int' and 'str'"),
        error_index=0, error_pid=4242,
    )
    assert not is_user_error(error)

    def fail():
        raise error

    with pytest.raises(ProcessRaisedException):
        run_reporting_errors(fail)


def test_an_error_from_a_data_loader_worker_is_its_original_message():
    error = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal "
                       + _remote_traceback("ValueError: cannot read image /d/a.png: image file is truncated"))
    assert one_line(error) == "cannot read image /d/a.png: image file is truncated"


@pytest.mark.parametrize("message", ["DataLoader worker (pid 31215) is killed by signal: Killed. ",
                                     "DataLoader worker (pid(s) 31215, 31216) exited unexpectedly"])
def test_a_dead_data_loader_worker_is_one_line_wherever_torch_raises_it(message):
    # e.g. --eval-only, where torch's SIGCHLD handler may raise it in the middle of a forward: the machine's problem
    def evaluate():
        raise RuntimeError(message)

    assert is_user_error(RuntimeError(message)) and not is_user_error(RuntimeError("CUDA error: an illegal access"))
    assert run_reporting_errors(evaluate) == 2


def test_running_out_of_memory_is_one_line_on_the_gpu_and_on_the_cpu():
    with pytest.raises(RuntimeError) as cpu:
        torch.empty(2**58)  # 1 EiB: the CPU allocator refuses it at once
    for error in (cpu.value, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")):
        assert is_out_of_memory(error) and is_user_error(error)
    assert not is_out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))


@pytest.mark.parametrize("override, expected", [
    ("model.transformer.foreground_selector.keep_ratio=abc",
     "error: wrong value for config key 'model.transformer.foreground_selector.keep_ratio': 'abc' is not a number "
     "(it is 0.5 now)"),
    ("model.transformer.foreground_selector.cascade_keep_ratios=abc",
     "error: wrong value for config key 'model.transformer.foreground_selector.cascade_keep_ratios': 'abc' is not a "
     "list of numbers (it is [1.0, 0.8, 0.6] now)"),
    ("train.max_iter=2.5", "error: wrong value for config key 'train.max_iter': '2.5' is not an integer (it is 900 now)"),
])
def test_config_values_of_the_wrong_type_name_key_and_value(train_net, capsys, override, expected):
    assert train_net.cli(["--config-file", TREES_CONFIG, override]) == 2
    assert error_lines(capsys.readouterr().err) == [expected]


def _read_only_folder(tmp_path):
    """A folder this process cannot write to: a chmod-ed one, or for root (whom permissions do not stop) /sys."""
    if os.geteuid() == 0:
        return "/sys/focus_detr_output", "Operation not permitted"
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder / "out"), "Permission denied"


def test_read_only_output_folder_is_named(train_net, toy_dataset, capsys, tmp_path):
    output, why = _read_only_folder(tmp_path)
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={output}"]) == 2
    assert error_lines(capsys.readouterr().err) == [f"error: train.output_dir {output} is not writable: {why}"]


def test_output_folder_under_a_file_is_named(train_net, toy_dataset, capsys, tmp_path):
    (tmp_path / "a_file").write_text("")
    output = tmp_path / "a_file" / "out"
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={output}"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: train.output_dir {output} cannot be created: {tmp_path / 'a_file'} is a file, not a folder"
    ]


def _resume_command(train_net, argv):
    return shlex.join([sys.executable, os.path.abspath(train_net.__file__), *argv, "--resume"])


def test_full_disk_at_a_save_is_one_line_and_keeps_the_previous_checkpoint(train_net, toy_dataset, capsys, tmp_path,
                                                                            monkeypatch):
    import focus_detr.engine.checkpoint as checkpoint

    def full_disk_for_the_final_checkpoint(path, mode="r", *args, **kwargs):
        if os.path.basename(path).startswith(".model_final.pth."):  # a real full device: writes fail with ENOSPC
            return open("/dev/full", mode, *args, **kwargs)
        return open(path, mode, *args, **kwargs)

    # atomic_write's temporary file is opened by name
    monkeypatch.setattr(checkpoint, "open", full_disk_for_the_final_checkpoint, raising=False)
    out = tmp_path / "out"
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}"]
    assert train_net.cli(argv) == 2
    captured = capsys.readouterr()
    assert error_lines(captured.err) == [
        f"error: cannot save checkpoint {out / 'model_final.pth'}: no space left on device "
        f"(the previous checkpoint {out / 'model_0000004.pth'} is kept); once {out} can be written again, resume "
        f"with: {_resume_command(train_net, argv)}"
    ]
    assert not shows_traceback(captured.out + captured.err)
    assert (out / "last_checkpoint").read_text() == "model_0000004.pth"
    assert torch.load(out / "model_0000004.pth", weights_only=True)["iteration"] == 4
    assert not (out / "model_final.pth").exists() and not list(out.glob(".*.tmp"))
    # the error came at once: no final evaluation of the unsaved model ran first
    assert "Evaluation results" not in (out / "log.txt").read_text() and not (out / "eval_results.json").exists()


# log period 1: TensorBoard's event file is open, its last write fails; 20: it would be created at the end (its writing
# thread printed a traceback)
@pytest.mark.parametrize("log_period", [1, 20])
def test_a_folder_that_stops_being_writable_ends_with_the_save_s_line_and_the_resume_command(
        train_net, toy_dataset, capsys, tmp_path, monkeypatch, log_period):
    # `chattr +i` on the folder mid-run (root ignores chmod): the save failed, then the lock file's removal and the
    # TensorBoard writer's last write failed too, and the lock's PermissionError took the place of the save's line
    import errno

    import focus_detr.engine.checkpoint as checkpoint
    import focus_detr.engine.hooks as hooks
    import focus_detr.engine.output_lock as output_lock
    from detectron2.utils.events import TensorboardXWriter

    out = tmp_path / "out"
    denied = []

    def not_permitted(path):
        denied.append(path)
        return PermissionError(errno.EPERM, "Operation not permitted", str(path))

    def open_until_iteration_3(path, mode="r", *args, **kwargs):
        if "w" in mode and (os.path.basename(path).startswith(".model_0000003.pth.") or denied):
            raise not_permitted(path)
        return open(path, mode, *args, **kwargs)

    def remove(path, remove=os.remove):
        if denied:
            raise not_permitted(path)
        remove(path)

    def write(writer, write=TensorboardXWriter.write):
        if denied:
            raise not_permitted(out / "events.out.tfevents")
        write(writer)

    monkeypatch.setattr(checkpoint, "open", open_until_iteration_3, raising=False)
    monkeypatch.setattr(output_lock.os, "remove", remove)
    monkeypatch.setattr(TensorboardXWriter, "write", write)
    monkeypatch.setattr(hooks.os, "access", lambda path, mode, access=os.access: not denied and access(path, mode))
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", "train.checkpointer.period=2",
            f"train.log_period={log_period}"]
    with logged_warnings("focus_detr") as warnings:
        assert train_net.cli(argv) == 2
    captured = capsys.readouterr()
    assert error_lines(captured.err) == [
        f"error: cannot save checkpoint {out / 'model_0000003.pth'}: Operation not permitted (the previous checkpoint "
        f"{out / 'model_0000001.pth'} is kept); once {out} can be written again, resume with: "
        f"{_resume_command(train_net, argv)}"
    ]
    assert captured.err.strip().splitlines()[-1].startswith("error: cannot save checkpoint")
    assert not shows_traceback(captured.out + captured.err)
    assert len(warnings) == 2 and warnings[0].startswith(
        "The last metrics were not written (TensorboardXWriter): " if log_period == 1 else
        f"TensorBoard's event file is not written: {out} is not writable")
    assert bool(list(out.glob("events.out.tfevents.*"))) == (log_period == 1)
    assert warnings[1] == (f"Cannot remove the lock file {out / '.focus_detr.lock'} (Operation not permitted): the "
                           "lock is released all the same (a file no process holds blocks no run)")
    monkeypatch.undo()
    with output_lock.OutputDirLock(str(out)):  # released all the same
        pass


def test_a_disk_that_fills_while_torch_writes_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    # torch.save's zip writer raises "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ..."
    # from the OSError of a write midway: four tracebacks instead of the full-disk line
    import errno

    import focus_detr.engine.checkpoint as checkpoint
    from focus_detr.checkpoint import CheckpointError

    class FillingDisk(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    def filling_disk(path, mode="r", *args, **kwargs):
        return FillingDisk(path, mode.replace("b", "")) if "w" in mode else open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", filling_disk, raising=False)
    model = torch.nn.Linear(64, 64)
    with pytest.raises(CheckpointError, match=r"cannot save checkpoint .*model_0000001.pth: no space left on device "
                                              r"\(no earlier checkpoint exists\)"):
        checkpoint.AtomicDetectionCheckpointer(model, str(tmp_path)).save("model_0000001")
    with pytest.raises(CheckpointError, match=r"cannot save weights .*weights.pth: no space left on device$"):
        checkpoint.save_weights(str(tmp_path / "weights.pth"), model.state_dict())
    assert list(tmp_path.iterdir()) == []


def test_evaluating_a_missing_weights_file_leaves_the_folder_s_config_as_it_was(train_net, toy_dataset, capsys,
                                                                                tmp_path):
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}"]) == 0
    capsys.readouterr()
    config = (tmp_path / "config.yaml").read_bytes()
    missing = tmp_path / "nowhere.pth"
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path}",
                          f"train.init_checkpoint={missing}"]) == 2
    assert error_lines(capsys.readouterr().err) == [f"error: checkpoint not found: {missing}"]
    assert (tmp_path / "config.yaml").read_bytes() == config  # it named the missing file


@pytest.mark.parametrize("refused", [["--eval-only", "train.init_checkpoint=nowhere.pth"], ["train.device=mps"]])
def test_a_command_refused_before_its_run_creates_no_output_folder(train_net, toy_dataset, capsys, tmp_path,
                                                                    refused):
    # the folder's claim created it before these checks: an empty folder, or one with config.yaml and log.txt
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path / 'new'}", *refused]) == 2
    assert len(error_lines(capsys.readouterr().err)) == 1 and not (tmp_path / "new").exists()


def test_a_weights_file_with_detectron2_s_query_is_not_refused_before_set_up(train_net, toy_dataset, tmp_path):
    # the check before detectron2's set-up is the checkpointer's own: "?matching_heuristics=True" is not part of the file
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}", "train.max_iter=2"]) == 0
    weights = f"{tmp_path / 'model_final.pth'}?matching_heuristics=True"
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path / 'eval'}",
                          f"train.init_checkpoint='{weights}'"]) == 0


def test_resume_of_a_finished_run_says_there_is_nothing_to_do(train_net, toy_dataset, capsys, tmp_path):
    common = ["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}"]
    assert train_net.cli(common) == 0
    capsys.readouterr()
    record = {name: (tmp_path / name).read_bytes() for name in ("config.yaml", "log.txt")}
    assert train_net.cli(common + ["--resume", "optimizer.lr=0.5"]) == 2
    # refused before detectron2's set-up: the finished run's config and log are as they were (the config said lr 0.5)
    assert {name: (tmp_path / name).read_bytes() for name in record} == record
    assert error_lines(capsys.readouterr().err) == [
        f"error: nothing to resume in {tmp_path}: its last checkpoint is at iteration 10 and train.max_iter is 10; "
        "raise train.max_iter to train longer (the learning-rate schedule's milestones, fractions of train.max_iter, "
        "move with it)"
    ]


@pytest.mark.parametrize("signal_name, status", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_a_tool_stopped_by_sigterm_or_sighup_says_so_and_cleans_up(capsys, signal_name, status):
    # every tool but train_net ended silently on these (status -15 / -1), skipping its clean-up: a data build left
    # its temporary folder behind
    import signal

    cleaned = []

    def tool():
        try:
            os.kill(os.getpid(), getattr(signal, signal_name))
            signal.pause() if hasattr(signal, "pause") else None
        finally:
            cleaned.append(True)

    previous = signal.getsignal(getattr(signal, signal_name))
    assert run_reporting_errors(tool) == status
    assert capsys.readouterr().err == f"interrupted by {signal_name}\n"
    assert cleaned == [True]
    assert signal.getsignal(getattr(signal, signal_name)) == previous  # restored for whatever runs next


def test_a_full_disk_under_a_report_names_the_file(tmp_path, monkeypatch):
    import focus_detr.engine.checkpoint as checkpoint

    # a real full device: the write fails with ENOSPC, an OSError naming no file ("[Errno 28] ..." alone)
    monkeypatch.setattr(checkpoint, "open", lambda path, mode="r", *args, **kwargs: open("/dev/full", mode),
                        raising=False)
    report = tmp_path / "eval_results.json"
    with pytest.raises(OSError) as raised:
        checkpoint.write_json(str(report), {"AP": 1.0})
    assert one_line(raised.value) == f"cannot write {report}: No space left on device"
    assert is_user_error(raised.value) and not list(tmp_path.iterdir())
