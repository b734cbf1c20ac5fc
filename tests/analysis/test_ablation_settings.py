"""An ablation run folder is reused only with the settings it was started with (analysis/ablation_settings.py)."""
import json
import os

import pytest

from focus_detr.analysis.ablation import AblationRun, planned_runs, read_finished_run, run_pending, write_finished_run
from focus_detr.analysis.ablation_settings import (check_run_settings, resolved_config, run_settings,
                                                   training_overrides)
from focus_detr.engine import load_config, resolve_device

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TREES_CONFIG = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")
KEEP_RATIO = "model.transformer.foreground_selector.keep_ratio"


def test_a_run_folder_is_reused_only_with_the_settings_it_was_started_with(tmp_path):
    run = planned_runs(str(tmp_path), ["full"], [1])[0]
    trained = []

    def fake_train(run):
        trained.append(run)
        return {"AP": 1.0}

    def study(*overrides, config_file=TREES_CONFIG, threads=1):
        return run_pending([run], fake_train, log=lambda line: None,
                           settings={run: run_settings(config_file, overrides, run, threads)})

    study("train.max_iter=2", "train.eval_period=0")
    with open(run.settings_path) as f:  # recorded when the run started
        assert json.load(f)["overrides"] == ["train.max_iter=2", "train.eval_period=0", "train.seed=1"]
    assert study("train.eval_period=0", "train.max_iter=2")[0]["AP"] == 1.0 and len(trained) == 1  # same, reordered
    with pytest.raises(ValueError) as error:  # was: skipped as finished, its results reported as these settings'
        study("train.max_iter=4", f"{KEEP_RATIO}=0.2")
    message = str(error.value)
    assert message.startswith(f"{run.folder} holds a run started with other settings (") and "\n" not in message
    assert (f"{KEEP_RATIO}: (not set), now 0.2; train.eval_period: 0, now (not set); train.max_iter: 2, now 4)"
            in message)
    assert "give a new --output for these settings, or delete" in message and len(trained) == 1
    # trained at another thread count (--threads, OMP_NUM_THREADS), which alone changes the weights: was reused
    with pytest.raises(ValueError, match=r"other settings \(CPU threads \(--threads\): 1, now 2\): give a new"):
        study("train.max_iter=2", "train.eval_period=0", threads=2)
    other_config = os.path.join(REPO_ROOT, "configs", "focus_detr_r50_4scale_12ep.py")
    with pytest.raises(ValueError, match=f"config file: {TREES_CONFIG}, now {other_config}"):
        study("train.max_iter=2", "train.eval_period=0", config_file=other_config)
    os.remove(run.record_path)  # nothing left to reuse (no record, weights or checkpoint): it starts afresh
    study("train.max_iter=4")
    with open(run.settings_path) as f:
        assert json.load(f)["overrides"] == ["train.max_iter=4", "train.seed=1"] and len(trained) == 2


def test_a_run_folder_is_refused_after_a_file_of_its_config_changed(tmp_path):
    # the study's config imports a base config: the same path and overrides, another content
    base = tmp_path / "base.py"
    base.write_text(f"from detectron2.config import LazyConfig\n_trees = LazyConfig.load({TREES_CONFIG!r})\n"
                    "model, train, dataloader = _trees.model, _trees.train, _trees.dataloader\n"
                    "optimizer, lr_multiplier = _trees.optimizer, _trees.lr_multiplier\n")
    config = tmp_path / "study_config.py"
    config.write_text("from .base import dataloader, lr_multiplier, model, optimizer, train\n")
    run = planned_runs(str(tmp_path / "study"), ["full"], [1])[0]
    trained = []

    def study():
        return run_pending([run], lambda run: trained.append(run) or {"AP": 1.0}, log=lambda line: None,
                           settings={run: run_settings(str(config), ["train.max_iter=2"], run, threads=1)})

    study()
    assert study()[0]["AP"] == 1.0 and len(trained) == 1  # unchanged: reused
    with open(base, "a") as f:
        f.write("model.transformer.foreground_selector.keep_ratio = 0.2\n")
    with pytest.raises(ValueError) as error:  # was: skipped as finished, the old model's AP reported as the new one's
        study()
    assert str(error.value).startswith(f"{run.folder} holds a run started with other settings ({KEEP_RATIO}: 0.5, "
                                       "now 0.2): give a new --output for these settings, or delete")
    assert len(trained) == 1


def test_a_run_another_invocation_finished_with_other_settings_is_refused_at_the_end(tmp_path):
    import fcntl

    runs = planned_runs(str(tmp_path), ["full", "dense"], [1])
    settings = {run: run_settings(TREES_CONFIG, ["train.max_iter=2"], run, threads=1) for run in runs}
    os.makedirs(runs[0].folder)
    with open(os.path.join(runs[0].folder, ".ablation_run.lock"), "a") as held:  # another invocation runs it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)

        def train_while_the_other_finishes(run):  # the other invocation was started with train.max_iter=3
            with open(runs[0].settings_path, "w") as f:
                json.dump(run_settings(TREES_CONFIG, ["train.max_iter=3"], runs[0], threads=1), f)
            write_finished_run(runs[0], {"AP": 3.0})
            return {"AP": 1.0}

        with pytest.raises(ValueError, match=f"{runs[0].folder} holds a run .*train.max_iter: 3, now 2"):
            run_pending(runs, train_while_the_other_finishes, log=lambda line: None, settings=settings)
    assert read_finished_run(runs[1])["AP"] == 1.0  # this invocation's run is kept


def test_a_run_folder_from_before_the_settings_record_is_checked_against_its_config_yaml(tmp_path):
    from detectron2.config import LazyConfig

    run = planned_runs(str(tmp_path), ["full"], [1])[0]
    started = run_settings(TREES_CONFIG, ["train.max_iter=2"], run, threads=1)
    os.makedirs(run.folder)
    spelled_otherwise = AblationRun(run.variant, run.seed, os.path.join(tmp_path, ".", "full", "seed1"))
    LazyConfig.save(load_config(TREES_CONFIG, training_overrides(spelled_otherwise, started)),
                    os.path.join(run.folder, "config.yaml"))
    with open(os.path.join(run.folder, "last_checkpoint"), "w") as f:  # an interrupted training, resumable
        f.write("model_0000000.pth")
    check_run_settings(run, started)
    with pytest.raises(ValueError, match=rf"other settings \({KEEP_RATIO}: 0.5, now 0.2; train.max_iter: 2, now 4\)"):
        check_run_settings(run, run_settings(TREES_CONFIG, ["train.max_iter=4", f"{KEEP_RATIO}=0.2"], run, threads=1))
    with open(run.settings_path, "w") as f:  # a record from before it held the resolved config: config.yaml has it
        json.dump(started, f)
    check_run_settings(run, started)
    with open(run.settings_path, "w") as f:  # nor the thread count: unknown, not checked
        json.dump({key: value for key, value in started.items() if key != "threads"}, f)
    check_run_settings(run, {**started, "threads": 2})
    os.remove(run.settings_path)
    os.remove(os.path.join(run.folder, "config.yaml"))
    with pytest.raises(ValueError, match="holds a run without a readable record of its settings"):
        check_run_settings(run, started)


def test_a_run_recorded_by_an_older_config_that_left_arguments_at_their_defaults_is_reused(tmp_path):
    # a config listing more of its constructors' arguments (at their defaults), and train.device "auto" where the
    # record has the device it resolved to, refused every run of a study started before: "model.class_prior_prob:
    # (not set), now 0.01; ..."
    run = planned_runs(str(tmp_path), ["full"], [1])[0]
    started = run_settings(TREES_CONFIG, ["train.max_iter=2"], run, threads=1)
    recorded = resolved_config(run, started)
    for key in ("model.class_prior_prob", "model.transformer.proposal_base_size", "model.position_embedding.eps"):
        del recorded[key]
    recorded["train.device"] = resolve_device("auto")
    os.makedirs(run.folder)
    with open(run.settings_path, "w") as f:
        json.dump({**started, "config": recorded}, f)
    write_finished_run(run, {"AP": 1.0})
    check_run_settings(run, started)
    with pytest.raises(ValueError, match=r"other settings \(model.class_prior_prob: \(not set\), now 0.02\)"):
        check_run_settings(run, run_settings(TREES_CONFIG, ["train.max_iter=2", "model.class_prior_prob=0.02"], run,
                                             threads=1))
    recorded["train.device"] = "cuda:7"  # another device than this machine's
    with open(run.settings_path, "w") as f:
        json.dump({**started, "config": recorded}, f)
    with pytest.raises(ValueError, match=r"other settings \(train.device: cuda:7, now auto\)"):
        check_run_settings(run, started)
