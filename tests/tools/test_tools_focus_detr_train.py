"""train_net.py and the main job with the real (tiny) Focus-DETR: exact resume with denoising randomness, COCO eval."""
import os
import shutil

import pytest
import torch

from focus_detr.engine.output_lock import LOCK_FILE_NAME, OutputDirInUseError, OutputDirLock
from tools_test_utils import TINY_TOY_CONFIG, load_script, toy_dataset  # noqa: F401 (fixture)


def _run(train_net, *argv):
    return train_net.main(train_net.default_argument_parser().parse_args(["--config-file", TINY_TOY_CONFIG, *argv]))


def test_focus_detr_resume_from_iteration_5_is_bit_exact(toy_dataset, tmp_path):
    train_net = load_script("train_net.py", "train_net")
    common = ["train.max_iter=8", "train.checkpointer.period=5", "dataloader.evaluator=null"]
    _run(train_net, f"train.output_dir={tmp_path / 'full'}", *common)

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(tmp_path / "full" / "model_0000004.pth", resumed_dir)
    (resumed_dir / "last_checkpoint").write_text("model_0000004.pth")
    _run(train_net, "--resume", f"train.output_dir={resumed_dir}", *common)

    expected = torch.load(tmp_path / "full" / "model_final.pth", weights_only=True)
    resumed = torch.load(resumed_dir / "model_final.pth", weights_only=True)
    for name, value in expected["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    for state, other in zip(expected["trainer"]["optimizer"]["state"].values(), resumed["trainer"]["optimizer"]["state"].values()):
        assert torch.equal(state["exp_avg"], other["exp_avg"])
    assert torch.equal(expected["rank_states"][0]["rng"]["torch"], resumed["rank_states"][0]["rng"]["torch"])


def _new_job_folder(base):
    from focus_detr.engine.job_folders import claimed_new_folder

    with claimed_new_folder(base) as (folder, claim):
        assert claim.folder == os.path.abspath(folder)
        return folder


def test_main_job_never_reuses_a_folder_holding_a_run(tmp_path):
    """(Which folder ``--resume`` picks: tests/tools/test_main_job_resume.py.)"""
    main_job = load_script("tools/main_job.py", "main_job")
    base = str(tmp_path / "main_job")

    def finish_run(folder, checkpoint="last_checkpoint"):
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, checkpoint), "w").close()

    assert _new_job_folder(base) == base
    finish_run(base)
    assert _new_job_folder(base) == base + "-2"
    finish_run(base + "-2", "model_final.pth")  # copied in, without its tag: a new job would write over it
    assert _new_job_folder(base) == base + "-3"
    # a job started just before this one holds its folder and has no checkpoint yet (it was refused: "--output ... is
    # in use by another run", although no --output was given)
    with OutputDirLock(base + "-3", key="--output"):
        assert _new_job_folder(base) == base + "-4"
        with pytest.raises(OutputDirInUseError, match=r"^--output .*main_job-3 is in use by another run"):
            main_job.main(main_job.parse_args(["--config-file", TINY_TOY_CONFIG, "--output", base + "-3"]))
    assert not os.path.exists(os.path.join(base + "-3", LOCK_FILE_NAME))
    open(os.path.join(base + "-3", LOCK_FILE_NAME), "w").close()  # left by a killed job: no one holds it
    assert _new_job_folder(base) == base + "-3"


def test_two_main_jobs_started_at_once_without_output_each_get_a_folder(tmp_path, monkeypatch, capsys):
    # both chose output/main_job (no lock held yet), and the second to claim it was refused naming an --output that
    # was never given
    main_job = load_script("tools/main_job.py", "main_job")
    monkeypatch.chdir(tmp_path)
    other_job = OutputDirLock(os.path.abspath(main_job.DEFAULT_OUTPUT), key="--output")
    acquire = OutputDirLock.acquire

    def claimed_first_by_the_other_job(lock):
        if other_job.claim() is None:
            acquire(other_job)
        return acquire(lock)

    monkeypatch.setattr(OutputDirLock, "acquire", claimed_first_by_the_other_job)
    monkeypatch.setattr(main_job, "_run_job", lambda args: (args.output, args.output_claim.folder))
    try:
        folder, claimed = main_job.main(main_job.parse_args([]))
    finally:
        other_job.release()
    assert (folder, claimed) == (main_job.DEFAULT_OUTPUT + "-2", str(tmp_path / "output" / "main_job-2"))
    assert capsys.readouterr().out == (f"[main job] {main_job.DEFAULT_OUTPUT} holds an earlier or running job: this "
                                       f"one goes to {folder}\n")


def test_a_main_job_passes_over_a_folder_whose_job_saved_and_ended_while_it_chose(tmp_path, monkeypatch):
    # between the look at the folder and its claim, the job holding it saved a checkpoint and ended: the claim
    # refused it as "--output output/main_job holds an earlier run's checkpoints", an --output never given
    main_job = load_script("tools/main_job.py", "main_job")
    monkeypatch.chdir(tmp_path)
    acquire = OutputDirLock.acquire

    def saved_by_the_job_that_just_ended(lock):
        if os.path.basename(lock.folder) == os.path.basename(main_job.DEFAULT_OUTPUT):
            with open(os.path.join(lock.folder, "model_0000009.pth"), "wb"):
                pass
            with open(os.path.join(lock.folder, "last_checkpoint"), "w") as f:
                f.write("model_0000009.pth")
        return acquire(lock)

    monkeypatch.setattr(OutputDirLock, "acquire", saved_by_the_job_that_just_ended)
    monkeypatch.setattr(main_job, "_run_job", lambda args: args.output)
    assert main_job.main(main_job.parse_args([])) == main_job.DEFAULT_OUTPUT + "-2"


def test_main_job_trains_evaluates_and_draws(toy_dataset, tmp_path, capsys):
    main_job = load_script("tools/main_job.py", "main_job")
    summary = main_job.main(main_job.parse_args(
        ["--config-file", TINY_TOY_CONFIG, "--output", str(tmp_path), "--demo-images", "1", "--threads", "1",
         "train.max_iter=2"]
    ))
    assert summary["model"]["AP50"] is not None and summary["grid_baseline"]["AP50"] is not None
    assert len(summary["pictures"]) == 3 and all(os.path.isfile(p) for p in summary["pictures"])
    assert os.path.isfile(summary["checkpoint"])
    assert summary["training_curves"] == str(tmp_path / "training_curves.png")
    assert os.path.getsize(summary["training_curves"]) > 20_000
    out = capsys.readouterr().out
    assert "trivial grid baseline" in out and str(tmp_path) in out
    assert f"training curves:     {tmp_path / 'training_curves.png'}" in out
