"""train_net on the toy detector: checkpoints, exact resume, evaluation, EMA, AMP."""
import os
import shutil

import pytest
import torch

from engine_test_utils import TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)


def _train(train_net, output_dir, *extra, resume=False):
    argv = ["--config-file", TOY_CONFIG] + (["--resume"] if resume else []) + [f"train.output_dir={output_dir}", *extra]
    args = train_net.default_argument_parser().parse_args(argv)
    train_net.main(args)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_tree(a, b, where=""):
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def test_resume_from_iteration_5_matches_uninterrupted_run(train_net, toy_dataset, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    _train(train_net, uninterrupted, "train.max_iter=10", "train.checkpointer.period=5")
    assert (uninterrupted / "model_0000004.pth").is_file()
    assert (uninterrupted / "metrics.json").is_file()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(uninterrupted))

    # an interrupted run: only the iteration-5 checkpoint survived
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copy(uninterrupted / "model_0000004.pth", interrupted)
    (interrupted / "last_checkpoint").write_text("model_0000004.pth")
    _train(train_net, interrupted, "train.max_iter=10", "train.checkpointer.period=5", resume=True)

    log = (interrupted / "log.txt").read_text()
    assert "Resuming at iteration 5 (RNG and data position restored)" in log
    assert "optimizer settings" not in log  # the same config: nothing overrides the checkpoint's
    expected, resumed = _load(uninterrupted / "model_final.pth"), _load(interrupted / "model_final.pth")
    assert resumed["iteration"] == expected["iteration"] == 9
    # weights, optimizer moments, hook states, every RNG and the data-loader position: all bit-identical
    _assert_same_tree(expected["model"], resumed["model"], "model")
    _assert_same_tree(expected["trainer"], resumed["trainer"], "trainer")
    _assert_same_tree(expected["rank_states"], resumed["rank_states"], "rank_states")


def test_resume_takes_the_learning_rate_and_weight_decay_of_its_config_and_says_so(train_net, toy_dataset, tmp_path):
    # the checkpoint's optimizer state used to replace them without a word (detectron2 loads every param group's
    # hyperparameters, and the LR schedule multiplies the saved base rate), so lowering the rate of a diverging run
    # at resume changed nothing
    import json

    def logged_rates(output_dir):
        records = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
        return {record["iteration"]: record["lr"] for record in records if "lr" in record}

    run = ["train.max_iter=8", "train.checkpointer.period=4"]
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    _train(train_net, first, *run, "optimizer.lr=1e-3")
    resumed.mkdir()
    shutil.copy(first / "model_0000003.pth", resumed)
    (resumed / "last_checkpoint").write_text("model_0000003.pth")
    _train(train_net, resumed, *run, "optimizer.lr=1e-4", "optimizer.weight_decay=0.5", resume=True)
    log = (resumed / "log.txt").read_text()
    # the backbone's group trains at a tenth of the rate
    assert ("Resuming with the config's optimizer settings, not the checkpoint's: lr 0.0001 -> 1e-05, 0.001 -> 0.0001, "
            "weight_decay 0.0001 -> 0.5") in log
    before, after = logged_rates(first), logged_rates(resumed)
    assert sorted(after) == [4, 5, 6, 7]
    assert all(after[i] == pytest.approx(before[i] / 10) for i in after)  # the same schedule on the new base rate
    groups = _load(resumed / "model_final.pth")["trainer"]["optimizer"]["param_groups"]
    assert {group["initial_lr"] for group in groups} == {1e-5, 1e-4}
    assert 0.5 in {group["weight_decay"] for group in groups} and 1e-4 not in {group["weight_decay"] for group in groups}


def test_resume_with_a_longer_max_iter_says_the_schedule_stretches(train_net, toy_dataset, tmp_path):
    # the toy schedule decays at 8 of 10 iterations; detectron2 evaluates it at iteration / max_iter, so continuing
    # the finished run to 20 put the rate back up to x1 without a word
    import json

    _train(train_net, tmp_path, "train.max_iter=10")
    assert _load(tmp_path / "model_final.pth")["max_iter"] == 10
    _train(train_net, tmp_path, "train.max_iter=20", resume=True)
    log = (tmp_path / "log.txt").read_text()
    assert ("Resuming a run trained with train.max_iter=10 at train.max_iter=20: the learning-rate schedule is a "
            "function of iteration / train.max_iter, so its milestones move with it; at iteration 10 the lr "
            "multiplier is 1 instead of 0.1") in log
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    rates = {record["iteration"]: record["lr"] for record in records if "lr" in record}
    assert rates[10] == pytest.approx(rates[9] * 10)  # what the line announces

    # the documented way to keep the decayed rate: the schedule's own length moves too; the line stays, without a jump
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth")
    _train(train_net, tmp_path, "train.max_iter=20", "lr_multiplier.scheduler.milestones=[8,20]", resume=True)
    log = (tmp_path / "log.txt").read_text().split("Resuming at iteration 10 ")[-1]  # the third run's lines
    assert "Resuming a run trained with train.max_iter=10 at train.max_iter=20" in log
    assert "lr multiplier" not in log


def test_resume_with_the_same_max_iter_does_not_warn(train_net, toy_dataset, tmp_path):
    _train(train_net, tmp_path, "train.max_iter=10", "train.checkpointer.period=5")
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth")
    _train(train_net, tmp_path, "train.max_iter=10", "train.checkpointer.period=5", resume=True)
    assert "Resuming a run trained with" not in (tmp_path / "log.txt").read_text()


def test_resume_says_that_it_does_not_load_train_init_checkpoint(train_net, toy_dataset, tmp_path):
    # a resume given other initial weights continued the run without a word about them
    _train(train_net, tmp_path, "train.max_iter=4", "train.checkpointer.period=2")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    _train(train_net, tmp_path, "train.max_iter=4", "train.checkpointer.period=2",
           f"train.init_checkpoint={tmp_path / 'model_final.pth'}", resume=True)
    assert (f"train.init_checkpoint {tmp_path / 'model_final.pth'} is not loaded: the run continues from "
            f"{tmp_path / 'model_0000001.pth'}") in (tmp_path / "log.txt").read_text()


def test_max_to_keep_counts_the_checkpoints_from_before_a_resume(train_net, toy_dataset, tmp_path):
    # the checkpoints saved before the resume were never pruned: 4 numbered ones where max_to_keep says 2
    keep = ["train.checkpointer.period=1", "train.checkpointer.max_to_keep=2"]
    _train(train_net, tmp_path, "train.max_iter=6", *keep)
    _train(train_net, tmp_path, "train.max_iter=11", *keep, resume=True)
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000008.pth", "model_0000009.pth", "model_final.pth"]


def test_resume_without_restoring_rng_would_differ(train_net, toy_dataset, tmp_path):
    """Guards the test above: the toy model draws random numbers, so an unrestored generator shows up."""
    first, second = tmp_path / "a", tmp_path / "b"
    _train(train_net, first, "train.max_iter=3", "train.checkpointer.period=100", "train.seed=1")
    _train(train_net, second, "train.max_iter=3", "train.checkpointer.period=100", "train.seed=2")
    a, b = _load(first / "model_final.pth")["model"], _load(second / "model_final.pth")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_eval_only_reports_coco_metrics(train_net, toy_dataset, tmp_path):
    _train(train_net, tmp_path / "train", "train.max_iter=2")
    args = train_net.default_argument_parser().parse_args(
        ["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path / 'eval'}",
         f"train.init_checkpoint={tmp_path / 'train' / 'model_final.pth'}"]
    )
    results = train_net.main(args)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}
    assert (tmp_path / "eval" / "eval_results.json").is_file()
    assert (tmp_path / "eval" / "coco_instances_results.json").is_file()

    # detectron2's --eval-only --resume: the last checkpoint of train.output_dir, not random weights
    resumed = train_net.main(train_net.default_argument_parser().parse_args(
        ["--config-file", TOY_CONFIG, "--eval-only", "--resume", f"train.output_dir={tmp_path / 'train'}"]
    ))
    assert [resumed["bbox"][k] for k in ("AP", "AP50", "AP75")] == [results["bbox"][k] for k in ("AP", "AP50", "AP75")]
    last = tmp_path / "train" / "model_final.pth"
    assert f"Evaluating the last checkpoint of {tmp_path / 'train'}: {last}" in (tmp_path / "train" / "log.txt").read_text()


def test_eval_only_resume_without_a_checkpoint_is_one_line(train_net, toy_dataset, tmp_path, capsys):
    code = train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", "--resume", f"train.output_dir={tmp_path}"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --eval-only --resume evaluates the last checkpoint in train.output_dir {tmp_path}, which holds none; "
        "or evaluate a file: train.init_checkpoint=FILE"
    )


def test_ema_and_bf16_amp_train_on_cpu(train_net, toy_dataset, tmp_path):
    _train(
        train_net, tmp_path, "train.max_iter=2", "train.amp.enabled=True", "train.model_ema.enabled=True",
        "train.model_ema.decay=0.5",
    )
    checkpoint = _load(tmp_path / "model_final.pth")
    ema = checkpoint["trainer"]["hooks"]["EMAHook"]["shadow"]
    assert ema.keys() == checkpoint["model"].keys()
    weight = "class_embed.weight"
    assert not torch.equal(ema[weight], checkpoint["model"][weight])  # an average lags behind the weights
    assert torch.isfinite(ema[weight]).all()


def _largest_difference(shadow, weights):
    return max((shadow[name] - value).abs().max().item() for name, value in weights.items()
               if value.dtype.is_floating_point)


def test_the_ema_starts_from_the_weights_training_starts_from(train_net, toy_dataset, tmp_path):
    # the average was taken when the hook was built, before train.init_checkpoint was loaded: it started from the
    # random initialisation (41% of it left after 900 steps at decay 0.999; AP 0.0004 instead of 0.38)
    _train(train_net, tmp_path / "a", "train.max_iter=2", "train.seed=1")
    start = _load(tmp_path / "a" / "model_final.pth")["model"]
    ema = ["train.model_ema.enabled=True", "train.model_ema.decay=0.999", "train.seed=2"]
    _train(train_net, tmp_path / "b", "train.max_iter=1", f"train.init_checkpoint={tmp_path / 'a' / 'model_final.pth'}",
           *ema)
    b = _load(tmp_path / "b" / "model_final.pth")
    shadow = b["trainer"]["hooks"]["EMAHook"]["shadow"]
    # one step of 0.1% towards the trained weights, from the loaded ones
    assert _largest_difference(shadow, start) < 1.1e-3 * _largest_difference(b["model"], start)
    # resumed from a checkpoint holding no average (a's): it starts from the resumed weights; one holding an
    # average (b's) goes on from it
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    _train(train_net, tmp_path / "c", "train.max_iter=3", *ema, resume=True)
    c = _load(tmp_path / "c" / "model_final.pth")
    assert _largest_difference(c["trainer"]["hooks"]["EMAHook"]["shadow"], start) < 1.1e-3 * _largest_difference(
        c["model"], start)
    _train(train_net, tmp_path / "b", "train.max_iter=2", *ema, resume=True)
    resumed = _load(tmp_path / "b" / "model_final.pth")
    expected = {name: 0.999 * value + 0.001 * resumed["model"][name] if value.dtype.is_floating_point
                else resumed["model"][name] for name, value in shadow.items()}
    assert _largest_difference(resumed["trainer"]["hooks"]["EMAHook"]["shadow"], expected) < 1e-6


def _warnings(err):
    return [line for line in err.splitlines() if line.startswith("warning: ")]


def test_an_evaluation_says_when_it_evaluates_other_weights_than_the_runs_own(train_net, toy_dataset, tmp_path, capsys):
    run, other = tmp_path / "train", tmp_path / "other"
    _train(train_net, run, "train.max_iter=2", "train.checkpointer.period=1")
    _train(train_net, other, "train.max_iter=2")
    first, last, foreign = run / "model_0000000.pth", run / "model_final.pth", other / "model_final.pth"
    capsys.readouterr()
    # --eval-only --resume evaluated the run's last checkpoint and left the file named by the user unmentioned
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", "--resume", f"train.output_dir={run}",
                          f"train.init_checkpoint={foreign}"]) == 0
    assert _warnings(capsys.readouterr().err) == [
        f"warning: train.init_checkpoint {foreign} is not evaluated: --eval-only --resume evaluates the last "
        f"checkpoint of train.output_dir, {last}; without --resume the file is evaluated"]
    # a fine-tuned run's own config.yaml names the weights it started from: they were scored in the run's folder
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={run}",
                          f"train.init_checkpoint={foreign}"]) == 0
    assert _warnings(capsys.readouterr().err) == [
        f"warning: train.output_dir {run} holds a training run (its last checkpoint: {last}) but train.init_checkpoint "
        f"{foreign} is evaluated, and its results replace the run's; --resume evaluates the run's own model"]
    # any weights of the run's own folder (an earlier checkpoint): nothing to say
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={run}",
                          f"train.init_checkpoint={first}"]) == 0
    assert _warnings(capsys.readouterr().err) == []


def test_eval_only_resume_names_the_configs_own_init_checkpoint_in_the_log_only(toy_dataset, tmp_path, capsys):
    # the COCO configs' train.init_checkpoint is the ImageNet backbone: every --eval-only --resume warned of it
    from cli_output import logged_warnings

    from focus_detr.engine import load_config, run_training
    from focus_detr.engine.evaluation_run import run_evaluation

    run = tmp_path / "train"
    run_training(load_config(TOY_CONFIG, [f"train.output_dir={run}", "train.max_iter=2"]))
    cfg = load_config(TOY_CONFIG, [f"train.output_dir={run}", f"train.init_checkpoint={tmp_path / 'backbone.pkl'}"])
    capsys.readouterr()
    with logged_warnings("focus_detr.engine.evaluation_run") as warnings:
        run_evaluation(cfg, resume=True, init_checkpoint_given=False)
    assert warnings == [] and _warnings(capsys.readouterr().err) == []


def test_an_evaluation_that_stops_leaves_no_earlier_detections_behind(train_net, toy_dataset, tmp_path, monkeypatch):
    # coco_instances_results.json and instances_predictions.pth of the earlier model stayed next to a config.yaml
    # naming other weights; the visualising tools would have drawn them as this model's
    import focus_detr.engine.evaluation_run as evaluation_run

    run = tmp_path / "train"
    _train(train_net, run, "train.max_iter=2")
    evaluation = ["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path / 'eval'}",
                  f"train.init_checkpoint={run / 'model_final.pth'}"]
    assert train_net.cli(evaluation) == 0
    written = {"eval_results.json", "coco_instances_results.json", "instances_predictions.pth"}
    assert written <= {path.name for path in (tmp_path / "eval").iterdir()}

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation_run, "evaluate", stopped)
    assert train_net.cli(evaluation) == 130
    assert not written & {path.name for path in (tmp_path / "eval").iterdir()}


def test_resume_into_a_folder_without_a_checkpoint_says_a_new_run_starts(train_net, toy_dataset, tmp_path, capsys):
    # a mistyped or moved train.output_dir: a new run started in its place, with detectron2's INFO line only
    assert train_net.cli(["--config-file", TOY_CONFIG, "--resume", f"train.output_dir={tmp_path / 'typo'}",
                          "train.max_iter=1"]) == 0
    assert _warnings(capsys.readouterr().err) == [
        f"warning: --resume: train.output_dir {tmp_path / 'typo'} has no last_checkpoint to resume from; a new run "
        "starts there from random weights"]


def test_resume_with_another_batch_size_continues_as_with_another_process_count(train_net, toy_dataset, tmp_path):
    # "the saved data-loader state is for 1 processes x 2 images; this run has 1 x 1" named no setting, where a
    # changed process count (the same data-order problem) resumed with a warning
    from cli_output import logged_warnings

    _train(train_net, tmp_path, "train.max_iter=2")
    with logged_warnings("focus_detr.engine.hooks") as warnings:
        _train(train_net, tmp_path, "train.max_iter=3", "dataloader.train.total_batch_size=1", resume=True)
    assert warnings == ["The checkpoint was written with dataloader.train.total_batch_size 2 (2 per process) and this "
                        "run has 1 (1 per process): resuming the iteration, weights, optimizer and schedule, and the "
                        "data after the images it drew, but not its batches or RNG."]
    assert _load(tmp_path / "model_final.pth")["iteration"] == 2


def test_an_evaluation_leaves_another_folders_detections_alone_and_says_where_they_go(train_net, toy_dataset,
                                                                                         tmp_path):
    # an evaluator folder set apart from train.output_dir: the evaluation removed that folder's results (another
    # run's), and its own went there without a word
    from cli_output import logged_warnings

    run, elsewhere = tmp_path / "train", tmp_path / "elsewhere"
    _train(train_net, run, "train.max_iter=2")
    elsewhere.mkdir()
    (elsewhere / "coco_instances_results.json").write_text("[]")
    (elsewhere / "eval_results.json").write_text("{}")
    with logged_warnings("focus_detr.engine.evaluation_run") as warnings:
        assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path / 'eval'}",
                              f"train.init_checkpoint={run / 'model_final.pth'}",
                              f"dataloader.evaluator.output_dir={elsewhere}"]) == 0
    assert (elsewhere / "eval_results.json").read_text() == "{}"
    assert warnings == [f"dataloader.evaluator.output_dir {elsewhere} is not train.output_dir {tmp_path / 'eval'}: "
                        "the evaluator writes coco_instances_results.json and instances_predictions.pth there"]


def test_an_evaluation_without_an_output_folder_leaves_the_working_folders_files(train_net, toy_dataset, tmp_path,
                                                                                 monkeypatch):
    from focus_detr.engine import load_config
    from focus_detr.engine.evaluation_run import run_evaluation

    run = tmp_path / "train"
    _train(train_net, run, "train.max_iter=2")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval_results.json").write_text("the user's")
    run_evaluation(load_config(TOY_CONFIG, ["train.output_dir=''", f"train.init_checkpoint={run / 'model_final.pth'}"]))
    assert (tmp_path / "eval_results.json").read_text() == "the user's"


def test_an_evaluation_in_a_training_runs_folder_keeps_the_runs_config(train_net, toy_dataset, tmp_path):
    # detectron2's set-up wrote the evaluation's config over the run's: evaluated with other settings, the run
    # was described by them, and the config it trained with was lost
    from detectron2.config import LazyConfig

    _train(train_net, tmp_path, "train.max_iter=2")
    trained_config = (tmp_path / "config.yaml").read_bytes()
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", "--resume", f"train.output_dir={tmp_path}",
                          "model.feature_noise=0.01"]) in (0, None)
    assert (tmp_path / "config.yaml").read_bytes() == trained_config
    assert LazyConfig.load(str(tmp_path / "eval_config.yaml")).model.feature_noise == 0.01
    assert (tmp_path / "eval_results.json").exists()

    fresh = tmp_path / "fresh"  # a folder without a training run: the evaluation's config is its config.yaml
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={fresh}"]) in (0, None)
    assert (fresh / "config.yaml").exists() and not (fresh / "eval_config.yaml").exists()


def test_an_evaluation_keeps_the_config_of_a_run_killed_before_its_first_checkpoint(train_net, toy_dataset, tmp_path):
    # its metrics.json is the run's record; a folder of earlier evaluations only is no training run
    _train(train_net, tmp_path, "train.max_iter=2")
    (tmp_path / "last_checkpoint").unlink()
    trained_config = (tmp_path / "config.yaml").read_bytes()
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path}",
                          "model.feature_noise=0.01"]) in (0, None)
    assert (tmp_path / "config.yaml").read_bytes() == trained_config and (tmp_path / "eval_config.yaml").exists()


def test_log_txt_is_plain_text_and_names_the_kernel_and_threads(train_net, toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("FOCUS_DETR_MSDA_BACKEND", "pytorch")
    # detectron2's set-up logs the config file coloured for a terminal (pygments, which pytest brings)
    _train(train_net, tmp_path / "out", "train.max_iter=1")
    log = (tmp_path / "out" / "log.txt").read_text()
    # two runs' results compare only with the same attention backend and thread count
    assert "deformable attention (MSDA) on cpu: the pytorch backend ($FOCUS_DETR_MSDA_BACKEND=pytorch); " in log
    assert f"CPU threads: {torch.get_num_threads()} intra-op, " in log
    assert log.count("Contents of args.config_file=") == 1 and "\x1b[" not in log  # was: the file in colour codes
    assert f"Contents of args.config_file={TOY_CONFIG}:\n" in log and "\ntrain.max_iter = 10\n" in log
