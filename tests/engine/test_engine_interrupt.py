"""Ctrl-C (SIGINT) and SIGTERM during training: the run stops after the current iteration with a checkpoint saved
there, prints one line (iteration, checkpoint, the command that resumes) and no traceback, exits 130 / 143, and the
resumed run ends bit-identical to an uninterrupted one. A second Ctrl-C stops at once."""
import logging
import os
import shlex
import signal

import pytest
import torch

from cli_output import shows_traceback
from engine_test_utils import TOY_CONFIG, TrainNetProcess, load_checkpoint, toy_dataset, train_net  # noqa: F401
from interrupted_runs import RUN, STOP_LINE, stop_lines

def _assert_same_checkpoint(expected, actual):
    for part in ("model", "trainer", "rank_states"):
        flat_expected, flat_actual = _flatten(expected[part]), _flatten(actual[part])
        assert flat_expected.keys() == flat_actual.keys(), part
        for key, value in flat_expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, flat_actual[key]), f"{part}.{key}"
            else:
                assert value == flat_actual[key], f"{part}.{key}"


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, child in tree.items() for k, v in _flatten(child, f"{prefix}.{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for index, child in enumerate(tree) for k, v in _flatten(child, f"{prefix}[{index}]").items()}
    return {prefix: tree}


@pytest.fixture(scope="module")
def uninterrupted_final(train_net, toy_dataset, tmp_path_factory):
    """The final checkpoint of the run the interrupted ones must end up equal to."""
    out = tmp_path_factory.mktemp("uninterrupted")
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={out}", *RUN]) == 0
    return load_checkpoint(out / "model_final.pth")


@pytest.mark.parametrize("number, status", [pytest.param(signal.SIGINT, 130, id="SIGINT"),
                                            pytest.param(signal.SIGTERM, 143, id="SIGTERM")])
def test_a_signal_stops_after_an_iteration_and_the_printed_command_resumes_bit_exactly(
    train_net, toy_dataset, uninterrupted_final, tmp_path, number, status
):
    out = tmp_path / "out"
    # one data-loader worker: it gets the signal too (the whole process group, as from a terminal or a scheduler)
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", *RUN, "dataloader.train.num_workers=1",
            "model.step_seconds=0.3"]
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    run = TrainNetProcess(argv, str(tmp_path), tmp_path / "data", tmpdir=temporary)
    run.wait_for(r"iter: 1 ")
    run.signal_group(number)
    assert run.wait(timeout=120) == status
    # the worker stopped with its iterator, cleaning up after itself (terminated at exit, it left a pymp-* folder)
    assert not list(temporary.glob("pymp-*"))
    stderr = run.stderr()
    assert not shows_traceback(stderr + run.stdout()) and "KeyboardInterrupt" not in stderr
    assert len(stop_lines(stderr)) == 1 and stderr.strip().splitlines()[-1] == stop_lines(stderr)[0]
    name, iteration, max_iter, checkpoint, next_iteration, command = STOP_LINE.match(stop_lines(stderr)[0]).groups()
    assert name == signal.Signals(number).name and max_iter == "10"
    assert 1 <= int(iteration) < 9 and int(next_iteration) == int(iteration) + 1
    assert checkpoint == str(out / f"model_{int(iteration):07d}.pth")
    assert (out / "last_checkpoint").read_text() == f"model_{int(iteration):07d}.pth"
    assert load_checkpoint(checkpoint)["iteration"] == int(iteration)
    assert shlex.split(command) == [*run.command, "--resume"]

    # the printed command's arguments, run here; neither the sleep nor the number of data-loader workers changes the
    # numbers (in-process workers would cost seconds at shutdown)
    assert train_net.cli(shlex.split(command)[2:] + ["model.step_seconds=0", "dataloader.train.num_workers=0"]) == 0
    assert f"Resuming at iteration {next_iteration} (RNG and data position restored)" in (out / "log.txt").read_text()
    _assert_same_checkpoint(uninterrupted_final, load_checkpoint(out / "model_final.pth"))


def test_a_second_ctrl_c_stops_at_once_and_names_the_last_checkpoint(train_net, toy_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    # during iteration 6 (after the checkpoint of iteration 4), Ctrl-C twice
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", *RUN, "model.signal_step=6",
            f"model.signals=[{int(signal.SIGINT)},{int(signal.SIGINT)}]"]
    assert train_net.cli(argv) == 130
    err = capsys.readouterr().err
    assert len(stop_lines(err)) == 1 and not shows_traceback(err)
    line = stop_lines(err)[0]
    assert line.startswith(f"training stopped by SIGINT during iteration 6 (train.max_iter 10), without saving; "
                           f"checkpoint {out / 'model_0000004.pth'} (a resume continues at iteration 5); resume with: ")
    assert line.endswith(" --resume")
    assert (out / "last_checkpoint").read_text() == "model_0000004.pth"
    assert not (out / "model_0000006.pth").exists() and not list(out.glob(".*.tmp"))


def test_a_second_ctrl_c_while_the_workers_stop_is_quiet_and_the_stop_line_stays_last(train_net, toy_dataset,
                                                                                      tmp_path, capsys, monkeypatch):
    # the second Ctrl-C (0.3 s after the first, to a terminal's process group with --num-gpus 2) came while torch's
    # iterator destructor joined the data-loading workers: "Exception ignored in: <function
    # _MultiProcessingDataLoaderIter.__del__ ...> ... KeyboardInterrupt" after the stop line, their stop cut short
    import sys

    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    shutdown = _MultiProcessingDataLoaderIter._shutdown_workers

    def shutdown_pressing_ctrl_c(self):
        if not self._shutdown:
            os.kill(os.getpid(), signal.SIGINT)
        return shutdown(self)

    unraisable = []
    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "_shutdown_workers", shutdown_pressing_ctrl_c)
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    out = tmp_path / "out"
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", *RUN, "dataloader.train.num_workers=1",
            "model.signal_step=3", f"model.signals=[{int(signal.SIGINT)}]"]
    assert train_net.cli(argv) == 130
    err = capsys.readouterr().err
    assert not unraisable and not shows_traceback(err)
    name, iteration = STOP_LINE.match(err.strip().splitlines()[-1]).group(1, 2)
    assert (name, iteration) == ("SIGINT", "3") and (out / "last_checkpoint").read_text() == "model_0000003.pth"


def test_a_stop_before_the_first_checkpoint_says_a_resume_starts_from_scratch(train_net, toy_dataset, tmp_path,
                                                                              capsys):
    out = tmp_path / "out"
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", *RUN, "model.signal_step=2",
            f"model.signals=[{int(signal.SIGTERM)},{int(signal.SIGINT)}]"]
    assert train_net.cli(argv) == 130  # the second signal, a Ctrl-C, stopped it
    assert stop_lines(capsys.readouterr().err)[0].startswith(
        "training stopped by SIGINT during iteration 2 (train.max_iter 10), without saving; "
        "no checkpoint yet: a resume starts from scratch; resume with: "
    )
    assert not (out / "last_checkpoint").exists()


def test_a_signal_in_an_early_iteration_stops_after_it(train_net, toy_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    # iteration 1: logged already and before detectron2's iteration timer has any history
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", *RUN, "model.signal_step=1",
            f"model.signals=[{int(signal.SIGTERM)}]"]
    assert train_net.cli(argv) == 143
    err = capsys.readouterr().err
    assert STOP_LINE.match(stop_lines(err)[0]).group(2) == "1" and not shows_traceback(err)
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"


def test_a_signal_during_set_up_stops_before_the_first_iteration(toy_dataset, tmp_path):
    from focus_detr.engine import StopRequest, TrainingInterrupted, load_config, run_training

    cfg = load_config(TOY_CONFIG, [f"train.output_dir={tmp_path}", *RUN])
    with StopRequest() as stop_request, pytest.raises(TrainingInterrupted) as stopped:
        os.kill(os.getpid(), signal.SIGTERM)  # while the model and data are being set up
        run_training(cfg, stop_request=stop_request, resume_command="RESUME")
    assert stopped.value.exit_status == 143
    assert str(stopped.value) == ("training stopped by SIGTERM before iteration 0 (train.max_iter 10); no checkpoint "
                                  "yet: a resume starts from scratch; resume with: RESUME")
    assert not (tmp_path / "last_checkpoint").exists()


def test_a_ctrl_c_during_a_save_takes_effect_once_the_checkpoint_is_written(train_net, toy_dataset, tmp_path, capsys,
                                                                             monkeypatch):
    # Ctrl-C during iteration 6, and again while its checkpoint is being written (a second Ctrl-C used to cut
    # torch.save short: a traceback, exit status 1, sometimes an abort at exit)
    from focus_detr.engine import AtomicDetectionCheckpointer

    save = AtomicDetectionCheckpointer.save

    def save_pressing_ctrl_c(self, name, **kwargs):
        if name == "model_0000006":
            os.kill(os.getpid(), signal.SIGINT)
        return save(self, name, **kwargs)

    monkeypatch.setattr(AtomicDetectionCheckpointer, "save", save_pressing_ctrl_c)
    out = tmp_path / "out"
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", *RUN, "model.signal_step=6",
            f"model.signals=[{int(signal.SIGINT)}]"]
    assert train_net.cli(argv) == 130
    err = capsys.readouterr().err
    assert not shows_traceback(err)
    name, iteration, _, checkpoint, next_iteration, _ = STOP_LINE.match(stop_lines(err)[0]).groups()
    assert (name, iteration, next_iteration) == ("SIGINT", "6", "7") and checkpoint == str(out / "model_0000006.pth")
    assert (out / "last_checkpoint").read_text() == "model_0000006.pth"
    assert load_checkpoint(checkpoint)["iteration"] == 6 and not list(out.glob(".*.tmp"))


def test_sigterm_outside_training_is_one_line_and_releases_the_folder(train_net, toy_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={out}", *RUN]) == 0
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", "--eval-only",
            f"train.init_checkpoint={out / 'model_final.pth'}", f"model.inference_signals=[{int(signal.SIGTERM)}]"]
    capsys.readouterr()
    assert train_net.cli(argv) == 143
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "interrupted by SIGTERM" and not shows_traceback(err)
    assert train_net.cli(argv[:-1]) == 0  # the folder is free again


def test_writes_hold_stop_signals_until_the_file_is_complete(tmp_path):
    from focus_detr.engine import atomic_write

    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def write_pressing_ctrl_c(f):
        f.write(b"new, ")
        signal.raise_signal(signal.SIGINT)  # Python's own handler: KeyboardInterrupt, held here
        f.write(b"complete")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), write_pressing_ctrl_c)
    assert path.read_bytes() == b"new, complete" and os.listdir(tmp_path) == ["file.bin"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_during_a_checkpoint_save_is_announced_once_and_taken_once(tmp_path):
    # the checkpoint hook's save holds the signals around atomic_write, which holds them too: the inner block handed
    # its signal on to the outer one, and each said "received while a file is being written"
    from focus_detr.engine import atomic_write
    from focus_detr.engine.interrupt import stop_signals_deferred

    def write_receiving_sigterm(f):
        signal.raise_signal(signal.SIGTERM)
        f.write(b"complete")

    received, records = [], []
    log = logging.getLogger("focus_detr.engine.interrupt")  # its own handler: a run's set-up stops propagation
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    log.addHandler(handler)
    previous = signal.signal(signal.SIGTERM, lambda number, frame: received.append(number))
    try:
        with stop_signals_deferred():
            atomic_write(str(tmp_path / "file.bin"), write_receiving_sigterm)
            assert received == []  # held until the save is complete
    finally:
        signal.signal(signal.SIGTERM, previous)
        log.removeHandler(handler)
    assert received == [signal.SIGTERM]
    assert [record.getMessage() for record in records] == [
        "SIGTERM received while a file is being written: it takes effect once the file is complete"]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")
def test_a_closed_terminal_stops_training_like_sigterm_unless_started_with_nohup(train_net, toy_dataset, tmp_path,
                                                                                 capsys):
    out = tmp_path / "out"
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", *RUN, "model.signal_step=3",
            f"model.signals=[{int(signal.SIGHUP)}]"]
    assert train_net.cli(argv) == 129
    assert STOP_LINE.match(stop_lines(capsys.readouterr().err)[0]).group(1, 2) == ("SIGHUP", "3")
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts it
    try:
        assert train_net.cli(argv[:2] + [f"train.output_dir={tmp_path / 'nohup'}"] + argv[3:]) == 0
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_ctrl_c_ignored_at_start_stays_ignored(train_net, toy_dataset, tmp_path):
    # a script's background job (`python train_net.py ... &` in a non-interactive shell) starts with SIGINT ignored,
    # so that a Ctrl-C at the terminal stops the script alone: training installed its own handler and stopped
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}", *RUN, "model.signal_step=3",
            f"model.signals=[{int(signal.SIGINT)}]"]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert train_net.cli(argv) == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signal_number, line, status", [(signal.SIGTERM, "interrupted by SIGTERM", 143),
                                                         (signal.SIGINT, "interrupted", 130)])
def test_processes_ended_by_a_passed_on_signal_give_that_signal_s_line_and_status(train_net, toy_dataset, tmp_path,
                                                                                   capsys, monkeypatch, signal_number,
                                                                                   line, status):
    # an --eval-only of several processes, stopped: "interrupted by a signal (process 0 terminated with signal
    # SIGTERM)" and status 130, also for a Ctrl-C; one process says "interrupted by SIGTERM" with 143
    from torch.multiprocessing import ProcessExitedException

    def launch_stopped(*args, **kwargs):
        os.kill(os.getpid(), signal_number)  # recorded and passed on by the launching process
        raise ProcessExitedException("process 0 terminated with signal SIGTERM", error_index=0, error_pid=1,
                                     exit_code=-signal.SIGTERM, signal_name="SIGTERM")

    monkeypatch.setattr(train_net, "launch", launch_stopped)
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", "--num-gpus", "2",
                          f"train.output_dir={tmp_path}"]) == status
    assert capsys.readouterr().err.strip().splitlines()[-1] == line


def test_a_process_killed_from_outside_is_one_line_naming_the_resume(train_net, toy_dataset, tmp_path, capsys,
                                                                     monkeypatch):
    # kill -9 of one training process (the out-of-memory killer): two tracebacks ending in "process 1 terminated with
    # signal SIGKILL", and no word of the checkpoint or the resume
    from torch.multiprocessing import ProcessExitedException

    out = tmp_path / "out"
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={out}", *RUN]) == 0

    def launch_killed(*args, **kwargs):
        raise ProcessExitedException("process 1 terminated with signal SIGKILL", error_index=1, error_pid=4242,
                                     exit_code=-signal.SIGKILL, signal_name="SIGKILL")

    monkeypatch.setattr(train_net, "launch", launch_killed)
    capsys.readouterr()
    argv = ["--config-file", TOY_CONFIG, "--resume", "--num-gpus", "2", f"train.output_dir={out}", "train.max_iter=20"]
    assert train_net.cli(argv) == 2
    err = capsys.readouterr().err
    last = (out / "last_checkpoint").read_text()
    assert err.strip().splitlines()[-1].startswith(
        "error: process 1 (pid 4242) was killed by SIGKILL (kill -9, or the out-of-memory killer: see dmesg); the "
        f"others stopped; a resume continues at iteration 10 from {out / last}; resume with: ")
    assert not shows_traceback(err)

    def launch_crashed(*args, **kwargs):
        raise ProcessExitedException("process 1 terminated with signal SIGSEGV", error_index=1, error_pid=4242,
                                     exit_code=-signal.SIGSEGV, signal_name="SIGSEGV")

    monkeypatch.setattr(train_net, "launch", launch_crashed)  # a crash is a bug: it keeps torch's report
    with pytest.raises(ProcessExitedException, match="SIGSEGV"):
        train_net.cli(argv)


def test_with_several_processes_a_signal_just_after_the_last_check_still_stops_the_run(monkeypatch):
    # the processes agreed on "no signal" in the last iteration's all-gather; one that came before stop_at_once was
    # recorded and never read again: the run evaluated and exited 0
    from types import SimpleNamespace

    from detectron2.utils import comm

    from focus_detr.engine.interrupt import StopOnRequestHook

    class StopRequestSignalledAfterTheFirstCheck:
        signal_number, last_signal = None, None

        def stop_at_once(self):
            self.signal_number = signal.SIGTERM  # came between the all-gather and this call

    def all_gather(value):
        return [value, None]

    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "all_gather", all_gather)
    request = StopRequestSignalledAfterTheFirstCheck()
    hook = StopOnRequestHook(request, checkpoint_hook=None)
    hook.trainer = SimpleNamespace(iter=9, max_iter=10)
    with pytest.raises(KeyboardInterrupt):
        hook.after_step()
    assert request.last_signal == signal.SIGTERM
