"""tools/main_job.py stopped by Ctrl-C: the one line it ends with names a command that finishes the job, and
``--resume`` finishes it without retraining once training is complete (it used to print train_net's ``--eval-only``
command, which main_job.py refuses, and its ``--resume`` failed with "nothing to resume"); the command names the
job's folder, and ``--resume`` without ``--output`` picks the unfinished job, never an earlier finished one."""
import os
import shlex
import signal
import sys

import pytest
from tools_test_utils import REPO_ROOT, TINY_TOY_CONFIG, load_script, toy_dataset  # noqa: F401 (fixture)

from focus_detr.engine.cli import run_reporting_errors
from focus_detr.engine.config import ConfigError
from focus_detr.engine.job_folders import claimed_new_folder, unfinished_job

MAIN_JOB = os.path.join(REPO_ROOT, "tools", "main_job.py")
JOB = ["--config-file", TINY_TOY_CONFIG, "--demo-images", "1", "--threads", "1", "train.max_iter=2"]

main_job = load_script("tools/main_job.py", "main_job_resume")


def _run(argv, capsys):
    """The job as its command line runs it: exit status and the last line on stderr."""
    status = run_reporting_errors(main_job.main, main_job.parse_args(argv))
    lines = capsys.readouterr().err.strip().splitlines()
    return status, lines[-1] if lines else ""


def _job_arguments(command):
    """The arguments of a printed main_job.py command, checked to start this interpreter on tools/main_job.py."""
    words = shlex.split(command)
    assert words[:2] == [sys.executable, MAIN_JOB], command
    return words[2:]


def _folder_and_resume(arguments):
    """The --output of a job's arguments, checked to come with --resume."""
    assert "--resume" in arguments and arguments.count("--output") == 1, arguments
    return arguments[arguments.index("--output") + 1]


def _pressing_ctrl_c_once(function):
    calls = []

    def pressing(*args, **kwargs):
        if not calls:
            calls.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        return function(*args, **kwargs)

    return pressing


def _summary_finished(folder):
    return os.path.isfile(os.path.join(folder, "main_job_summary.json"))


def test_ctrl_c_after_training_names_a_command_that_finishes_the_job_without_retraining(
    toy_dataset, tmp_path, capsys, monkeypatch
):
    import focus_detr.analysis.baseline as baseline
    import focus_detr.engine as engine
    import focus_detr.engine.runner as runner

    out = str(tmp_path / "job")
    # Ctrl-C in the evaluation at the end of training (the checkpoint of the last iteration is saved)
    with monkeypatch.context() as patch:
        patch.setattr(runner, "evaluate", _pressing_ctrl_c_once(runner.evaluate))
        status, line = _run([*JOB, "--output", out], capsys)
    prefix = (f"training finished (checkpoint in {out}); SIGINT stopped the main job at the end of its training; "
              "finish the job (evaluation, pictures, summary) without retraining with: ")
    assert status == 130 and line.startswith(prefix), line
    command = line[len(prefix):]
    arguments = _job_arguments(command)
    assert _folder_and_resume(arguments) == out and "--eval-only" not in arguments
    final = tmp_path / "job" / "model_final.pth"
    trained = final.read_bytes()
    assert not _summary_finished(out)

    def no_training(*args, **kwargs):
        raise AssertionError("the job trained again")

    monkeypatch.setattr(engine, "run_training", no_training)  # what train_net.py (loaded by the job) trains with
    # the printed command, Ctrl-C again in a later step: the same command still finishes the job
    with monkeypatch.context() as patch:
        patch.setattr(baseline, "evaluate_grid_baseline", _pressing_ctrl_c_once(baseline.evaluate_grid_baseline))
        status, line = _run(arguments, capsys)
    assert status == 130 and line == (
        f"training finished (checkpoint in {out}); SIGINT stopped the main job during the baseline's evaluation; "
        f"finish the job (evaluation, pictures, summary) without retraining with: {command}"
    )
    assert not _summary_finished(out)

    summary = main_job.main(main_job.parse_args(arguments))
    assert summary["model"]["AP50"] is not None and summary["grid_baseline"]["AP50"] is not None
    assert summary["checkpoint"] == str(final) and summary["train_minutes"] is None
    assert len(summary["pictures"]) == 3 and all(os.path.isfile(p) for p in summary["pictures"])
    assert _summary_finished(out) and final.read_bytes() == trained
    assert "training completed by an earlier run" in capsys.readouterr().out

    # finished: a further --resume says so in one line instead of redoing it
    status, line = _run(arguments, capsys)
    assert status == 2 and line.startswith(f"error: nothing to resume in {out}: its job is finished")
    # also without the train.max_iter=2 it was started with: the config's 10 trained it on and removed its summary
    bare = [word for word in arguments if word != "train.max_iter=2"]
    status, line = _run(bare, capsys)
    assert status == 2 and line.startswith(f"error: nothing to resume in {out}: its job is finished"), line
    assert _summary_finished(out) and final.read_bytes() == trained


def test_a_job_stopped_before_its_first_checkpoint_is_resumed_in_its_own_folder(
    toy_dataset, tmp_path, capsys, monkeypatch
):
    import focus_detr.engine.runner as runner

    monkeypatch.chdir(tmp_path)  # the default folders: output/main_job, output/main_job-2, ...
    earlier = tmp_path / "output" / "main_job"  # a finished job
    earlier.mkdir(parents=True)
    (earlier / "last_checkpoint").write_text("model_final.pth")
    (earlier / "main_job_summary.json").write_text("{}")

    # a second job, Ctrl-C while its model is being built (no checkpoint yet)
    with monkeypatch.context() as patch:
        patch.setattr(runner, "build_model", _pressing_ctrl_c_once(runner.build_model))
        status, line = _run(JOB, capsys)
    assert status == 130 and line.startswith("training stopped by SIGINT before iteration 0"), line
    command = line.split("; resume with: ", 1)[1]
    arguments = _job_arguments(command)
    assert _folder_and_resume(arguments) == os.path.join("output", "main_job-2")
    assert not (tmp_path / "output" / "main_job-2" / "last_checkpoint").exists()

    # --resume without --output continues that job, not the earlier finished one
    at = arguments.index("--output")
    resumed = arguments[:at] + arguments[at + 2:]
    summary = main_job.main(main_job.parse_args(resumed))
    assert summary["checkpoint"] == str(tmp_path / "output" / "main_job-2" / "model_final.pth")
    assert _summary_finished(tmp_path / "output" / "main_job-2")
    assert sorted(os.listdir(earlier)) == ["last_checkpoint", "main_job_summary.json"]


def _job_folder(path, checkpoint=False, finished=False):
    os.makedirs(path)
    if checkpoint:
        with open(os.path.join(path, "last_checkpoint"), "w") as f:
            f.write("model_final.pth")
    if finished:
        with open(os.path.join(path, "main_job_summary.json"), "w") as f:
            f.write("{}")


def test_resume_without_output_picks_the_one_unfinished_job_or_names_the_candidates(tmp_path):
    base = str(tmp_path / "main_job")
    with pytest.raises(ConfigError, match=r"nothing to resume, no main job folder .*main_job \(or .*main_job-2, "):
        unfinished_job(base, main_job.SUMMARY)

    _job_folder(base, checkpoint=True, finished=True)
    _job_folder(base + "-2", checkpoint=True, finished=True)
    with pytest.raises(ConfigError, match=f"nothing to resume, every main job is finished \\({base}, {base}-2\\)"):
        unfinished_job(base, main_job.SUMMARY)

    _job_folder(base + "-3")  # stopped before its first checkpoint
    _job_folder(base + "-10", checkpoint=True, finished=True)
    assert unfinished_job(base, main_job.SUMMARY) == base + "-3"
    with claimed_new_folder(base) as (folder, _):
        assert folder == base + "-3"  # holds nothing to lose

    _job_folder(base + "-11", checkpoint=True)  # stopped in training
    with pytest.raises(ConfigError, match=f"several main jobs are unfinished \\({base}-3, {base}-11\\): name the one "
                                          "to finish with --output"):
        unfinished_job(base, main_job.SUMMARY)


def test_resume_without_output_passes_over_a_job_that_is_running(tmp_path):
    # a running job counted as unfinished: with a stopped one beside it, "several main jobs are unfinished"; alone,
    # it was chosen and the claim then refused it, naming an --output never given
    from focus_detr.engine import OutputDirLock

    base = str(tmp_path / "main_job")
    _job_folder(base)
    running = OutputDirLock(os.path.abspath(base), key="--output")
    running.acquire()
    try:
        with pytest.raises(ConfigError, match=r"--resume: the only unfinished main job\(s\) \(.*main_job\) are running "
                                              "now: wait for them to end"):
            unfinished_job(base, main_job.SUMMARY)
        _job_folder(base + "-2", checkpoint=True)  # stopped in training
        assert unfinished_job(base, main_job.SUMMARY) == base + "-2"
    finally:
        running.release()


def test_the_resume_command_repeats_the_options_given_and_names_the_folder():
    args = main_job.parse_args(["train.max_iter=5", "--threads", "2", "--output", "out dir", "train.seed=3"])
    words = shlex.split(main_job.resume_command(args))
    assert words == [sys.executable, MAIN_JOB, "--output", "out dir", "--resume", "--threads", "2", "train.max_iter=5",
                     "train.seed=3"]
    assert main_job.parse_args(words[2:]).resume


def test_a_job_without_an_evaluator_is_refused_before_training(toy_dataset, tmp_path, capsys):
    # the evaluation after training refused it, after all of the training
    status, line = _run([*JOB, "--output", str(tmp_path / "job"), "dataloader.evaluator=null"], capsys)
    assert status == 2 and line.startswith("error: the main job, which evaluates its model, needs dataloader.evaluator")
    assert not list((tmp_path / "job").glob("*.pth"))
