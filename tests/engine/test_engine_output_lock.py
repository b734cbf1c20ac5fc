"""One run per output folder: a second run (training, --resume or --eval-only) into a folder a live run holds is
refused with one line naming the folder and the holder's pid; a killed run's lock file does not block; training from
scratch into a folder holding an earlier run's checkpoints is refused with how to resume it."""
import os
import pickle
import re
import shutil
import signal

import pytest

from cli_output import error_lines, shows_traceback
from engine_test_utils import TOY_CONFIG, TrainNetProcess, toy_dataset, train_net  # noqa: F401 (fixtures)
from focus_detr.engine import OutputDirInUseError, OutputDirLock
from focus_detr.engine.output_lock import LOCK_FILE_NAME, OutputDirReplacedError


def _cli(train_net, capsys, out, *argv):
    code = train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={out}", *argv])
    return code, error_lines(capsys.readouterr().err)


def test_a_second_run_is_refused_while_the_first_lives_and_not_after_it_was_killed(train_net, toy_dataset, tmp_path,
                                                                                   capsys):
    out = tmp_path / "out"
    first = TrainNetProcess(["--config-file", TOY_CONFIG, f"train.output_dir={out}", "train.max_iter=200",
                             "train.log_period=1", "dataloader.train.num_workers=1", "model.step_seconds=0.2"],
                            str(tmp_path), tmp_path / "data")
    try:
        first.wait_for(r"iter: 0 ")
        in_use = re.compile(rf"^error: train\.output_dir {re.escape(str(out))} is in use by another run \(pid "
                            rf"{first.pid}, since [^)]+\): wait for it to end, or choose another train\.output_dir$")
        for extra in ([], ["--resume"], ["--eval-only"]):
            code, errors = _cli(train_net, capsys, out, "train.max_iter=2", *extra)
            assert code == 2 and len(errors) == 1 and in_use.match(errors[0]), (extra, errors)
        assert not (out / "eval_results.json").exists()

        # killed -9 (its data-loader worker lives on for a moment): the file stays, the lock does not
        os.kill(first.pid, signal.SIGKILL)
        first.process.wait()
        assert (out / LOCK_FILE_NAME).exists()
        code, errors = _cli(train_net, capsys, out, "train.max_iter=2", "--resume")
        assert (code, errors) == (0, [])
        assert (out / "last_checkpoint").read_text() == "model_final.pth"
        assert not (out / LOCK_FILE_NAME).exists()  # released at the end
    finally:
        first.kill()


def test_training_from_scratch_into_a_folder_with_checkpoints_is_refused(train_net, toy_dataset, tmp_path, capsys):
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth")
    code, errors = _cli(train_net, capsys, tmp_path, "train.max_iter=2")
    assert code == 2
    assert errors == [
        f"error: train.output_dir {tmp_path} holds an earlier run's checkpoints (last_checkpoint names "
        "model_0000004.pth): add --resume to continue that run, or choose another train.output_dir (or remove that "
        "folder) to start a new one"
    ]
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint"]  # nothing written, the lock released


def test_checkpoints_without_the_last_checkpoint_tag_are_not_written_over(train_net, toy_dataset, tmp_path, capsys):
    # a folder with a copied-in model_final.pth: a new run replaced it without a word
    (tmp_path / "model_final.pth").write_bytes(b"someone's weights")
    code, errors = _cli(train_net, capsys, tmp_path, "train.max_iter=2")
    assert (code, errors) == (2, [f"error: train.output_dir {tmp_path} holds checkpoints (model_final.pth) that a new "
                                  "run would write over: choose another train.output_dir, or move them away"])
    assert (tmp_path / "model_final.pth").read_bytes() == b"someone's weights"


def test_the_lock_is_exclusive_and_released(tmp_path):
    with OutputDirLock(str(tmp_path)):
        try:
            OutputDirLock(str(tmp_path), key="--output").acquire()
            raise AssertionError("a second lock on the folder was granted")
        except OutputDirInUseError as error:
            assert str(error).startswith(f"--output {tmp_path} is in use by another run (pid {os.getpid()}, since ")
    assert not (tmp_path / LOCK_FILE_NAME).exists()
    (tmp_path / LOCK_FILE_NAME).write_text("not what a run writes")  # left by a killed run: taken over
    with OutputDirLock(str(tmp_path)):
        assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_FILE_NAME).read_text()


def _descriptors_open_on(path):
    """How many of this process's file descriptors refer to the file ``path`` (Linux: /proc/self/fd)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.path.samestat(os.fstat(int(name)), os.stat(path))
        except OSError:  # the descriptor listdir used, closed by now
            pass
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_a_forked_child_does_not_hold_the_lock(tmp_path):
    """A data-loader worker forked from a training process must not keep the lock after that process dies."""
    with OutputDirLock(str(tmp_path)) as lock:
        assert _descriptors_open_on(lock.path) == 1
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:
            os.write(write_end, str(_descriptors_open_on(lock.path)).encode())
            os._exit(0)
        os.close(write_end)
        held_by_child = os.read(read_end, 16)
        os.close(read_end)
        os.waitpid(child, 0)
    assert held_by_child == b"0"


def _folder_removed_after_iteration_2(monkeypatch, out, then=None):
    """Removes ``out`` (rm -rf) once iteration 2 of the training in this process has run, before its hooks save;
    ``then()`` runs right after (e.g. another run claiming a new folder there)."""
    from focus_detr.engine.hooks import ResumableCheckpointHook

    def after_step(hook, after_step=ResumableCheckpointHook.after_step):
        if hook.trainer.iter == 2 and out.exists():
            shutil.rmtree(out)
            if then is not None:
                then()
        after_step(hook)

    monkeypatch.setattr(ResumableCheckpointHook, "after_step", after_step)


def _removed_or_replaced(out, why, iteration):
    return (f"error: train.output_dir {out} was removed or replaced while this run wrote there ({out / LOCK_FILE_NAME} "
            f"{why}): the run stops without writing into it, so the checkpoint of iteration {iteration} "
            f"(model_{iteration:07d}.pth) is not written, nor anything since the last one (its earlier checkpoints "
            "went with the folder); start the run again, or resume it where the folder was moved to, in a "
            "train.output_dir of its own")


# log period 20: TensorBoard's event file, opened at its first write, is not open yet; 1: it is, and written by path;
# eval period 2: an evaluation before the save (its evaluator wrote its predictions there, creating the folder again)
@pytest.mark.parametrize("log_period, eval_period", [(20, 0), (1, 0), (20, 2)])
def test_a_run_whose_folder_is_removed_stops_at_its_next_save_without_creating_it_again(
        train_net, toy_dataset, tmp_path, capsys, monkeypatch, log_period, eval_period):
    # its save created the folder again, holding only checkpoints, and a --resume into it was not refused
    out = tmp_path / "out"
    _folder_removed_after_iteration_2(monkeypatch, out)
    code = train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={out}", "train.checkpointer.period=2",
                          f"train.log_period={log_period}", f"train.eval_period={eval_period}"])
    captured = capsys.readouterr()
    assert (code, error_lines(captured.err)) == (2, [_removed_or_replaced(out, "is gone", 3)])
    assert not shows_traceback(captured.err) and not out.exists()


@pytest.mark.parametrize("replaced", [False, True])
def test_a_resume_whose_folder_is_removed_does_not_get_its_earlier_config_back(
        train_net, toy_dataset, tmp_path, capsys, monkeypatch, replaced):
    # a --resume into a folder holding only an earlier config.yaml put that file back once the run had stopped: the
    # folder, removed, was made again, or the folder made in its place got it
    out = tmp_path / "out"
    assert _cli(train_net, capsys, out, "train.max_iter=1") == (0, [])
    for name in os.listdir(out):  # a run refused after its set-up leaves its config alone
        if name != "config.yaml":
            os.remove(out / name)
    _folder_removed_after_iteration_2(monkeypatch, out, then=out.mkdir if replaced else None)
    code, errors = _cli(train_net, capsys, out, "--resume", "train.checkpointer.period=2")
    assert (code, errors) == (2, [_removed_or_replaced(out, "is gone", 3)])
    assert (os.listdir(out) == []) if replaced else not out.exists()


def test_a_folder_made_in_place_of_a_removed_one_never_gets_its_config_back(tmp_path):
    # a folder removed and made again often gets the removed one's inode number, so the two compared as one folder
    from focus_detr.engine.resume import run_record_kept

    out = tmp_path / "out"
    for _ in range(5):
        out.mkdir()
        (out / "config.yaml").write_text("earlier run")
        with pytest.raises(RuntimeError), run_record_kept(str(out)):
            shutil.rmtree(out)
            out.mkdir()
            raise RuntimeError("the command failed")
        assert os.listdir(out) == []
        shutil.rmtree(out)


def test_a_run_whose_folder_is_replaced_by_another_run_s_stops_and_leaves_that_run_s_lock(
        train_net, toy_dataset, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    other = OutputDirLock(str(out))  # a second run, started in the folder made again at the same path

    def claimed_by_another_run():
        out.mkdir()
        other.acquire()

    _folder_removed_after_iteration_2(monkeypatch, out, then=claimed_by_another_run)
    try:
        code, errors = _cli(train_net, capsys, out, "train.checkpointer.period=2")
        assert (code, errors) == (2, [_removed_or_replaced(out, "is another file, maybe another run's lock", 3)])
        assert sorted(os.listdir(out)) == [LOCK_FILE_NAME]  # nothing of the stopped run's
        with pytest.raises(OutputDirInUseError):  # the other run's lock file was left, and its lock held
            OutputDirLock(str(out)).acquire()
    finally:
        other.release()


def test_the_claim_that_started_processes_check_names_its_lock_file_by_identity(tmp_path):
    with OutputDirLock(str(tmp_path), key="--output") as lock:
        claim = pickle.loads(pickle.dumps(lock.claim()))  # as --num-gpus N hands it to its processes
        claim.check("nothing")
        os.rename(tmp_path / LOCK_FILE_NAME, tmp_path / "moved")
        (tmp_path / LOCK_FILE_NAME).write_text("")
        with pytest.raises(OutputDirReplacedError, match=rf"^--output {re.escape(str(tmp_path))} was removed or "
                                                         r"replaced .*another file.*, so nothing \(its earlier"):
            claim.check("nothing")
    assert (tmp_path / LOCK_FILE_NAME).exists()  # not the released lock's file: left


def test_a_named_pipe_in_place_of_the_lock_file_is_one_line_and_does_not_block(tmp_path):
    # opened to read, a named pipe waited for a writer forever (main_job without --output hung); opened to write, its
    # truncation failed with a bare "Invalid argument"
    from focus_detr.engine.config import ConfigError

    os.mkfifo(tmp_path / LOCK_FILE_NAME)
    with pytest.raises(ConfigError) as refused:
        OutputDirLock(str(tmp_path), key="--output").acquire()
    assert str(refused.value) == (f"--output {tmp_path}: {tmp_path / LOCK_FILE_NAME} is a named pipe (FIFO), where a "
                                  "run keeps its lock file: remove it")
