"""A run that a failure stops mid-way (an unreadable image, a diverging loss, a step out of memory, a data-loading
worker killed, a failed evaluation) saves what it trained, says so in one line and resumes exactly."""
import re

import pytest
import torch

from cli_output import shows_traceback
from engine_test_utils import TOY_CONFIG, load_checkpoint, toy_dataset, train_net, train_toy  # noqa: F401
from focus_detr.engine.cli import MAX_MESSAGE_CHARS


def test_an_unreadable_image_mid_run_saves_what_was_trained_and_says_how_to_resume(train_net, toy_dataset, tmp_path,
                                                                                  capsys, monkeypatch):
    # a corrupt image hours into a run used to end it with the work since the last periodic checkpoint lost
    import shlex

    from focus_detr.data.dataset_mapper import DetrDatasetMapper

    run = ["train.max_iter=10", "train.checkpointer.period=100", "dataloader.evaluator=null"]
    full = tmp_path / "full"
    assert train_toy(train_net, full, *run) == 0

    mapped = DetrDatasetMapper.__call__
    calls = []

    def unreadable_seventh(self, dataset_dict):
        calls.append(1)
        if len(calls) == 7:
            raise ValueError(f"cannot read image {dataset_dict['file_name']}: image file is truncated")
        return mapped(self, dataset_dict)

    monkeypatch.setattr(DetrDatasetMapper, "__call__", unreadable_seventh)
    out = tmp_path / "out"
    capsys.readouterr()
    assert train_toy(train_net, out, *run) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: cannot read image ")
    assert ": image file is truncated; training stopped after iteration " in line
    iteration = int(line.split("training stopped after iteration ")[1].split(",")[0])
    assert 0 <= iteration < 9
    checkpoint = out / f"model_{iteration:07d}.pth"
    assert f", checkpoint {checkpoint} (a resume continues at iteration {iteration + 1})" in line
    assert (out / "last_checkpoint").read_text() == f"model_{iteration:07d}.pth"

    monkeypatch.setattr(DetrDatasetMapper, "__call__", mapped)  # the image fixed
    command = shlex.split(line.split("resume with: ")[1])
    assert command[-1] == "--resume" and train_net.cli(command[2:]) == 0
    expected = load_checkpoint(full / "model_final.pth")["model"]
    resumed = load_checkpoint(out / "model_final.pth")["model"]
    assert all(torch.equal(expected[key], resumed[key]) for key in expected)  # as if nothing had happened


STEP_FAILURES = {
    # a NaN loss used to end the run with detectron2's FloatingPointError traceback, and torch's out-of-memory error
    # with its own; the work since the last periodic checkpoint was lost either way
    "a diverging loss": ("model.nan_step=7", "error: training diverged at iteration 7: loss_bbox is nan, so its step was "
                         "not applied; lower optimizer.lr or clip gradients harder (train.clip_grad.params.max_norm, now "
                         "0.1)", "change what it names"),
    "a step out of memory": ("model.oom_step=7", "error: out of memory in iteration 7 (CUDA out of memory), so its step "
                             "was not applied", "lower dataloader.train.total_batch_size or the training image size (or "
                             "model.transformer.num_queries / model.denoising.dn_number where raised), or train with "
                             "train.amp.enabled=True"),
}


@pytest.mark.parametrize("failure", list(STEP_FAILURES))
def test_a_step_that_fails_before_the_optimiser_saves_the_iterations_before_it_and_a_resume_repeats_it(
    failure, train_net, toy_dataset, tmp_path, capsys
):
    import shlex

    knob, cause, remedy = STEP_FAILURES[failure]
    run = ["train.max_iter=10", "train.checkpointer.period=100", "dataloader.evaluator=null"]
    full = tmp_path / "full"
    assert train_toy(train_net, full, *run) == 0

    out = tmp_path / "out"
    capsys.readouterr()
    assert train_toy(train_net, out, *run, knob) == 2
    err = capsys.readouterr().err
    assert not shows_traceback(err), err[-3000:]
    line = err.strip().splitlines()[-1]
    checkpoint = out / "model_0000006.pth"
    assert line.startswith(
        f"{cause}; training stopped after iteration 6, checkpoint {checkpoint} (a resume continues at iteration 7): "
        f"{remedy}, then resume with: "
    ), line
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["iteration"] == 6 and all(torch.isfinite(value).all() for value in saved["model"].values())
    # the progress line printed at the end showed iteration 6's losses as iteration 7's, below the error
    log = (out / "log.txt").read_text()
    progress = re.findall(r"\biter: (\d+)\b", log)
    assert progress[-1] == "6", progress
    # the run's record says why it stopped and how to resume, as the terminal does
    assert log.rstrip().endswith(f" ERROR: {line.removeprefix('error: ')}")

    # the checkpoint is the run just before iteration 7 (its batch and random draws to come): resumed without the
    # failure, it ends where the run that never failed ended
    command = shlex.split(line.split("resume with: ")[1])
    assert command[-1] == "--resume"
    assert train_net.cli([arg for arg in command[2:] if arg != knob]) == 0
    expected = load_checkpoint(full / "model_final.pth")["model"]
    resumed = load_checkpoint(out / "model_final.pth")["model"]
    assert all(torch.equal(expected[key], resumed[key]) for key in expected)


def test_a_stop_whose_save_finds_the_disk_full_names_both_and_how_to_resume(train_net, toy_dataset, tmp_path, capsys,
                                                                           monkeypatch):
    # the save's own line took the place of the stop's, without the resume command the periodic save's line has
    import os
    import shlex
    import sys

    import focus_detr.engine.checkpoint as checkpoint

    def full_disk_for_iteration_6(path, mode="r", *args, **kwargs):
        if os.path.basename(path).startswith(".model_0000006.pth."):  # a real full device: writes fail with ENOSPC
            return open("/dev/full", mode, *args, **kwargs)
        return open(path, mode, *args, **kwargs)

    knob, cause, remedy = STEP_FAILURES["a diverging loss"]
    out = tmp_path / "out"
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", "train.max_iter=10", "train.checkpointer.period=4",
            "dataloader.evaluator=null"]
    monkeypatch.setattr(checkpoint, "open", full_disk_for_iteration_6, raising=False)  # atomic_write's temporary file
    assert train_net.cli([*argv, knob]) == 2
    err = capsys.readouterr().err
    assert not shows_traceback(err), err[-3000:]
    command = shlex.join([sys.executable, os.path.abspath(train_net.__file__), *argv, knob, "--resume"])
    assert err.strip().splitlines()[-1] == (
        f"{cause}; training stopped after iteration 6 and cannot save checkpoint {out / 'model_0000006.pth'}: no space "
        f"left on device (the previous checkpoint {out / 'model_0000003.pth'} is kept): {remedy}, then once {out} can "
        f"be written again, resume with: {command}")
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth" and not list(out.glob(".*.tmp"))

    monkeypatch.undo()  # room again
    assert train_net.cli([arg for arg in shlex.split(command)[2:] if arg != knob]) == 0
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 9

def test_a_loss_diverging_at_the_first_iteration_is_one_line_without_a_checkpoint(train_net, toy_dataset, tmp_path,
                                                                                   capsys):
    assert train_toy(train_net, tmp_path, "train.max_iter=3", "dataloader.evaluator=null", "model.nan_step=0") == 2
    err = capsys.readouterr().err
    assert not shows_traceback(err), err[-3000:]
    assert err.strip().splitlines()[-1].startswith("error: training diverged at iteration 0: loss_bbox is nan, so ")
    assert not list(tmp_path.glob("model_*.pth"))


def _children(pid):
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    import os

    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


def test_a_data_loading_worker_killed_mid_run_saves_what_was_trained_and_the_resume_repeats_the_run(tmp_path):
    # the out-of-memory killer taking a worker used to end the run with torch's traceback, raised wherever the main
    # process was (a forward, an optimiser step), and the work since the last periodic checkpoint lost
    import os
    import signal

    from engine_test_utils import TrainNetProcess

    common = ["--config-file", TOY_CONFIG, "train.max_iter=12", "train.checkpointer.period=100", "train.log_period=1",
              "dataloader.evaluator=null", "dataloader.train.num_workers=2"]
    full = tmp_path / "full"
    run = TrainNetProcess(common + [f"train.output_dir={full}"], str(tmp_path), tmp_path / "data")
    assert run.wait(timeout=300) == 0, run.stderr()[-3000:]

    out = tmp_path / "out"
    run = TrainNetProcess(common + [f"train.output_dir={out}", "model.step_seconds=0.2"], str(tmp_path),
                          tmp_path / "data")
    run.wait_for(r"iter: 3 ")
    workers = _children(run.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    assert run.wait(timeout=300) == 2, run.stderr()[-3000:]
    stderr = run.stderr()
    assert not shows_traceback(stderr), stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: a data-loading worker process died (process {workers[0]} killed by SIGKILL: out of "
                           "memory?); training stopped after iteration "), line
    iteration = int(line.split("training stopped after iteration ")[1].split(",")[0])
    assert 3 <= iteration < 11
    assert (f", checkpoint {out / f'model_{iteration:07d}.pth'} (a resume continues at iteration {iteration + 1}): "
            "free memory or lower dataloader.train.num_workers, then resume with: ") in line

    run = TrainNetProcess(common + [f"train.output_dir={out}", "--resume"], str(tmp_path), tmp_path / "data")
    assert run.wait(timeout=300) == 0, run.stderr()[-3000:]
    expected = load_checkpoint(full / "model_final.pth")["model"]
    resumed = load_checkpoint(out / "model_final.pth")["model"]
    assert all(torch.equal(expected[key], resumed[key]) for key in expected)  # as if nothing had happened


def _refusing_test_image(monkeypatch, call=8):
    """The toy config's test mapper refuses its ``call``-th image in every evaluation, as the mapper refuses an image
    recorded at another size than its file's (an unreadable file would be left out of the evaluation instead; a
    wrong size in the json itself is found before training, from the image's header)."""
    monkeypatch.setenv("FOCUS_DETR_TOY_TEST_REFUSED", f"0:{call}")


def test_a_test_image_refused_in_an_evaluation_during_training_saves_that_iteration(
    train_net, toy_dataset, tmp_path, capsys, monkeypatch
):
    # the periodic evaluation runs before that iteration's checkpoint: it used to end the run with every iteration
    # since the last checkpoint lost
    import shlex

    run = ["train.max_iter=10", "train.eval_period=7", "train.checkpointer.period=100"]
    full = tmp_path / "full"
    assert train_toy(train_net, full, *run) == 0

    from toy_detector import register_toy_dataset

    out = tmp_path / ("a_long_folder_name_" * 5)  # the line is longer than one_line's cut, whatever pytest's paths
    capsys.readouterr()
    _refusing_test_image(monkeypatch)
    register_toy_dataset("focus_detr_toy_test_set_with_an_image_its_mapper_refuses", str(tmp_path / "bad"))
    names = "dataloader.test.dataset.names=focus_detr_toy_test_set_with_an_image_its_mapper_refuses"
    assert train_toy(train_net, out, *run, names) == 2
    err = capsys.readouterr().err
    assert not shows_traceback(err), err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: image ") and (
        "but the dataset gives width 20 and height 20 (in the evaluation after iteration 6); training stopped after "
        "iteration 6, checkpoint "
        f"{out / 'model_0000006.pth'} (a resume continues at iteration 7): fix or remove what it names, then resume "
        "with: "
    ) in line, line

    # a long line keeps its whole resume command
    assert len(line) > MAX_MESSAGE_CHARS and line.endswith(" --resume")
    command = shlex.split(line.split("resume with: ")[1])
    monkeypatch.delenv("FOCUS_DETR_TOY_TEST_REFUSED")  # the data fixed
    assert train_net.cli(command[2:]) == 0
    expected = load_checkpoint(full / "model_final.pth")["model"]
    resumed = load_checkpoint(out / "model_final.pth")["model"]
    assert all(torch.equal(expected[key], resumed[key]) for key in expected)


def test_a_test_image_refused_in_the_final_evaluation_says_training_is_saved_and_how_to_evaluate(
    train_net, toy_dataset, tmp_path, capsys, monkeypatch
):
    import shlex

    _refusing_test_image(monkeypatch)
    out = tmp_path / "out"
    assert train_toy(train_net, out, "train.max_iter=3", "train.eval_period=0") == 2
    err = capsys.readouterr().err
    assert not shows_traceback(err), err[-3000:]
    line = err.strip().splitlines()[-1]
    final = out / "model_final.pth"
    assert line.startswith("error: image ") and (
        "but the dataset gives width 20 and height 20 (in the evaluation at the end of training); training is "
        f"complete and saved in {final}: "
    ) in line and ", then evaluate with: " in line, line
    command = shlex.split(line.split("evaluate with: ")[1])
    assert command[-2:] == ["--eval-only", f"train.init_checkpoint={final}"] and "--resume" not in command
    monkeypatch.delenv("FOCUS_DETR_TOY_TEST_REFUSED")  # the data fixed
    assert train_net.cli(command[2:]) == 0


def test_a_missing_test_image_is_found_before_training(train_net, toy_dataset, tmp_path, capsys):
    import json

    from toy_detector import register_toy_dataset

    register_toy_dataset("focus_detr_toy_missing_test", str(tmp_path / "data"))
    with open(tmp_path / "data" / "toy.json") as f:
        first = json.load(f)["images"][0]["file_name"]
    missing = tmp_path / "data" / "images" / first
    missing.unlink()
    out = tmp_path / "out"
    assert train_toy(train_net, out, "train.max_iter=3", "dataloader.test.dataset.names=focus_detr_toy_missing_test") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: dataset 'focus_detr_toy_missing_test' (") and (
        f": image file not found: {missing}; the evaluation at the end of training would stop there: fix the "
        "dataset's image folder (image_root) or its file names") in line, line
    assert not list(out.glob("model_*.pth"))  # refused before the first step


def test_an_evaluation_out_of_memory_during_training_saves_that_iteration_and_names_the_evaluation_settings(
    train_net, toy_dataset, tmp_path, capsys, monkeypatch
):
    from toy_detector import ToyDetector

    def out_of_memory(self, batched_inputs, logits, boxes):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB.")

    monkeypatch.setattr(ToyDetector, "inference", out_of_memory)
    assert train_toy(train_net, tmp_path, "train.max_iter=10", "train.eval_period=7", "train.checkpointer.period=100") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(
        "error: CUDA out of memory. Tried to allocate 8.00 GiB. (in the evaluation after iteration 6); training stopped "
        f"after iteration 6, checkpoint {tmp_path / 'model_0000006.pth'} "
    ), line
    assert (": lower dataloader.test.batch_size or the test image size (or model.transformer.num_queries where "
            "raised), or evaluate with train.inference_amp.enabled=True, then resume with: ") in line


def _evaluation_bug(monkeypatch):
    """The toy model's inference raises a bug's error (no user error): what a wrong evaluator setting that no check
    catches ends in, after inference (pycocotools' KeyError: 'id' for tasks=[segm])."""
    from toy_detector import ToyDetector

    def bug(self, batched_inputs, logits, boxes):
        raise KeyError("id")

    monkeypatch.setattr(ToyDetector, "inference", bug)


def test_a_bug_in_an_evaluation_during_training_keeps_its_traceback_and_saves_that_iteration(
    train_net, toy_dataset, tmp_path, monkeypatch
):
    # the periodic evaluation runs before its iteration's checkpoint: a bug in it lost every iteration since the last
    _evaluation_bug(monkeypatch)
    run = ["train.max_iter=4", "train.eval_period=2", "train.checkpointer.period=100"]
    with pytest.raises(RuntimeError) as raised:
        train_toy(train_net, tmp_path, *run)
    assert isinstance(raised.value.__cause__, KeyError)  # the bug's own traceback is shown above the line
    assert str(raised.value).startswith(
        "KeyError: 'id' (in the evaluation after iteration 1); training stopped after iteration 1, checkpoint "
        f"{tmp_path / 'model_0000001.pth'} (a resume continues at iteration 2): mend what the traceback above shows, "
        "then resume with: "), str(raised.value)
    # the run's record ends as the terminal does: the bug's traceback, its last line naming the checkpoint
    log = (tmp_path / "log.txt").read_text()
    assert log.rstrip().endswith(f"RuntimeError: {raised.value}") and "KeyError: 'id'" in log.split("stopped on")[-1]
    monkeypatch.undo()
    assert train_toy(train_net, tmp_path, *run, "--resume") == 0


def test_a_bug_in_the_final_evaluation_keeps_its_traceback_and_says_training_is_saved(
    train_net, toy_dataset, tmp_path, monkeypatch
):
    _evaluation_bug(monkeypatch)
    with pytest.raises(RuntimeError) as raised:
        train_toy(train_net, tmp_path, "train.max_iter=3", "train.eval_period=0")
    assert isinstance(raised.value.__cause__, KeyError)
    assert str(raised.value).startswith(
        "KeyError: 'id' (in the evaluation at the end of training); training is complete and saved in "
        f"{tmp_path / 'model_final.pth'}: mend what the traceback above shows, then evaluate with: "), str(raised.value)
    assert (tmp_path / "log.txt").read_text().rstrip().endswith(f"RuntimeError: {raised.value}")
