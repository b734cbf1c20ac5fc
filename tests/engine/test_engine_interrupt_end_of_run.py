"""A stop signal at the end of a training run: during its last iteration or final save the run stops once saved,
before the final evaluation, and says how to evaluate; during the final evaluation it stops at once, saying the same;
after it (or without one), it says nothing needs redoing."""
import os
import shlex
import signal

import pytest

from cli_output import shows_traceback
from engine_test_utils import TOY_CONFIG, load_checkpoint, toy_dataset, train_net  # noqa: F401 (fixtures)
from interrupted_runs import RUN, stop_lines


def _assert_stopped_before_the_final_evaluation(err, out, name):
    """The run saved its final checkpoint, ran no evaluation and its last line gives the command that evaluates."""
    assert not shows_traceback(err) and not stop_lines(err)
    final = out / "model_final.pth"
    prefix = (f"training finished (train.max_iter 10; checkpoint {final}); its evaluation was stopped by {name}; "
              "evaluate it with: ")
    assert err.strip().splitlines()[-1].startswith(prefix)
    assert err.strip().splitlines()[-1].endswith(f" --eval-only train.init_checkpoint={final}")
    assert (out / "last_checkpoint").read_text() == "model_final.pth" and load_checkpoint(final)["iteration"] == 9
    assert "Start inference" not in (out / "log.txt").read_text()


def test_a_signal_during_the_last_iteration_stops_the_run_before_the_final_evaluation(train_net, toy_dataset,
                                                                                     tmp_path, capsys):
    # it was recorded and never acted on: a scheduler's SIGTERM ran the whole final evaluation, and the run exited 0
    out = tmp_path / "out"
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", *RUN[:-1], "model.signal_step=9",
            f"model.signals=[{int(signal.SIGTERM)}]", "train.checkpointer.save_safetensors=True"]
    assert train_net.cli(argv) == 143
    _assert_stopped_before_the_final_evaluation(capsys.readouterr().err, out, "SIGTERM")
    assert (out / "model_final.safetensors").exists()  # written with the final checkpoint, before the evaluation


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")
def test_a_signal_during_the_final_save_stops_the_run_once_it_is_written(train_net, toy_dataset, tmp_path, capsys,
                                                                         monkeypatch):
    from focus_detr.engine import AtomicDetectionCheckpointer

    save = AtomicDetectionCheckpointer.save

    def save_closing_the_terminal(self, name, **kwargs):
        if name == "model_final":
            os.kill(os.getpid(), signal.SIGHUP)
        return save(self, name, **kwargs)

    monkeypatch.setattr(AtomicDetectionCheckpointer, "save", save_closing_the_terminal)
    out = tmp_path / "out"
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={out}", *RUN[:-1]]) == 129
    _assert_stopped_before_the_final_evaluation(capsys.readouterr().err, out, "SIGHUP")



def test_a_signal_in_the_final_evaluation_stops_it_at_once_and_says_how_to_evaluate(train_net, toy_dataset,
                                                                                  tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", "train.max_iter=10", "train.checkpointer.period=5",
            f"model.inference_signals=[{int(signal.SIGINT)}]"]
    assert train_net.cli(argv) == 130
    err = capsys.readouterr().err
    assert not shows_traceback(err) and not stop_lines(err)
    line = err.strip().splitlines()[-1]
    final = out / "model_final.pth"
    prefix = (f"training finished (train.max_iter 10; checkpoint {final}); its evaluation was stopped by SIGINT; "
              "evaluate it with: ")
    assert line.startswith(prefix)
    command = shlex.split(line[len(prefix):])
    assert command[-2:] == ["--eval-only", f"train.init_checkpoint={final}"] and "--resume" not in command
    # the command evaluates the final checkpoint (without the test's signal)
    assert train_net.cli(command[2:] + ["model.inference_signals=[]"]) == 0
    assert (out / "eval_results.json").exists()


@pytest.mark.parametrize("evaluator", ["null", "default"])
def test_a_signal_after_the_final_evaluation_says_nothing_needs_redoing(train_net, toy_dataset, tmp_path, capsys,
                                                                       monkeypatch, evaluator):
    """A signal while the run wraps up (its writers' last metrics), after the final evaluation or without one, must
    not send the user to evaluate again."""
    from focus_detr.engine.hooks import ProgressWriter

    write_last_metrics = ProgressWriter.after_train

    def pressing_ctrl_c(self):
        os.kill(os.getpid(), signal.SIGINT)
        return write_last_metrics(self)

    monkeypatch.setattr(ProgressWriter, "after_train", pressing_ctrl_c)
    out = tmp_path / "out"
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", *RUN[:-1]]
    if evaluator == "null":
        argv.append("dataloader.evaluator=null")
    assert train_net.cli(argv) == 130
    err = capsys.readouterr().err
    assert not shows_traceback(err) and not stop_lines(err)
    assert err.strip().splitlines()[-1] == (
        f"training finished (train.max_iter 10; checkpoint {out / 'model_final.pth'}); SIGINT stopped the run as it "
        "was wrapping up: nothing needs to be redone"
    )
