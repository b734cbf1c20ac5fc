"""tools/ablate.py: the command line (overrides printed, bad arguments one line), a whole tiny study that a second
invocation resumes without training again, and one whose runs a command with other overrides may not reuse."""
import csv
import os
import subprocess
import sys

import pytest
from tools_test_utils import (REPO_ROOT, TINY_TOY_CONFIG, load_script, toy_dataset,  # noqa: F401 (fixture)
                              toy_subprocess_env)

TREES_CONFIG = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")


@pytest.fixture(scope="module")
def ablate():
    return load_script("tools/ablate.py", "ablate_tool")


def _run(*arguments, data_root, cwd=REPO_ROOT):
    """tools/ablate.py on the tiny toy config: its training and evaluation runs register the toy data in
    ``data_root``."""
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "ablate.py"), *arguments],
                          capture_output=True, text=True, cwd=cwd, env=toy_subprocess_env(data_root))


def test_each_variants_overrides_are_printed(ablate, tmp_path, capsys):
    ablate.main(ablate.parse_args(["--config-file", TREES_CONFIG, "--output", str(tmp_path), "--print-overrides"]))
    printed = capsys.readouterr().out
    assert "[ablation] no_cascade: model.transformer.foreground_selector.cascade_keep_ratios=[1,1,1]" in printed
    assert "[ablation] random_selection: model.transformer.foreground_selector.token_ranking=random" in printed
    assert not os.listdir(tmp_path)  # nothing trained


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--variants", "full", "no_encoder"], "unknown ablation variant(s) no_encoder"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--flop-images", "0"], "--flop-images must be at least 1, got 0"),  # was refused after all the training
        (["train.seed=3"], "train.seed=3: the ablation sets train.output_dir, train.seed"),
        (["--device", "foo"], "--device 'foo' is not a torch device"),  # was found after every training run
        (["--output", "{tmp}/afile"], "--output {tmp}/afile is a file; name a folder"),  # said "File exists"
        # the runs' trainings do not evaluate: a test set they would have refused is refused before the first one
        (["dataloader.test.mapper.img_format=BGR"], "dataloader.train.mapper.img_format is RGB but "
                                                    "dataloader.test.mapper.img_format is BGR"),
    ],
)
def test_bad_arguments_are_one_line(ablate, tmp_path, arguments, message):
    (tmp_path / "afile").write_text("")
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    with pytest.raises(ValueError) as error:
        ablate.main(ablate.parse_args(["--config-file", TREES_CONFIG, "--output", str(tmp_path), *arguments]))
    assert message.format(tmp=tmp_path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("print_only", [[], ["--print-overrides"]])
def test_an_override_that_would_undo_a_variant_is_refused(ablate, tmp_path, capsys, monkeypatch, print_only):
    # was: applied after the variant's own, so the rows labelled dense / no_top_down were the full model's
    from focus_detr.analysis import ablation

    def no_training(*args, **kwargs):  # a refusal that does not come would otherwise train every variant
        raise AssertionError("the runs started")

    monkeypatch.setattr(ablation, "run_pending", no_training)
    for override, message in (
        ("model.transformer.foreground_selector.keep_ratio=0.3",
         "model.transformer.foreground_selector.keep_ratio=0.3 would undo the dense variant's own setting of "
         "model.transformer.foreground_selector.keep_ratio (your overrides are applied after the variant's): leave it "
         "out, or leave dense out of --variants"),
        ("model.transformer.foreground_selector.top_down_modulation=True",
         "would undo the no_top_down variant's own setting of "
         "model.transformer.foreground_selector.top_down_modulation"),
        ("model.transformer.foreground_selector.cascade_keep_ratios=[1,0.5,0.5]",
         "would undo the no_cascade, dense variants' own setting of"),
    ):
        with pytest.raises(ValueError) as error:
            ablate.main(ablate.parse_args(["--config-file", TREES_CONFIG, "--output", str(tmp_path), *print_only,
                                           override]))
        assert message in str(error.value) and "\n" not in str(error.value)
    assert not capsys.readouterr().out and not os.listdir(tmp_path)  # refused before printing or running anything
    # a key no variant sets still reaches every run
    ablate.main(ablate.parse_args(["--config-file", TREES_CONFIG, "--output", str(tmp_path), "--print-overrides",
                                   "--variants", "full", "no_cascade",
                                   "model.transformer.foreground_selector.keep_ratio=0.3"]))


def test_latency_is_timed_in_the_precision_the_runs_are_evaluated_in(ablate, toy_dataset, tmp_path, monkeypatch):
    import torch
    from focus_detr.analysis import timing
    from focus_detr.analysis.ablation import planned_runs
    from focus_detr.engine import build_model, load_config

    run = planned_runs(str(tmp_path), ["full"], [1])[0]
    os.makedirs(run.folder)
    torch.save({"model": build_model(load_config(TINY_TOY_CONFIG), "cpu").state_dict()},
               os.path.join(run.folder, "model_final.pth"))
    precisions = []

    def record_precision(module, inputs):  # of the model's forward, the first module called (parts may opt out)
        if len(precisions) < calls_made[0]:
            precisions.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)

    calls_made = [0]

    def timed_once(calls, device, warmup, repeats):  # what the timed calls run in, not how long they take
        with torch.nn.modules.module.register_module_forward_pre_hook(record_precision):
            for call in calls.values():
                calls_made[0] += 1
                call()
        return {name: [0.001] * repeats for name in calls}

    monkeypatch.setattr(timing, "time_interleaved", timed_once)
    args = ablate.parse_args(["--config-file", TINY_TOY_CONFIG, "--output", str(tmp_path), "--flop-images", "1",
                              "--latency-rounds", "5", "--device", "cpu", "train.inference_amp.enabled=True"])
    records = [{}]
    ablate._measure(args, [run], records, {"full": []})
    assert records[0]["latency_ms"] == 1.0 and records[0]["gflops"] > 0
    assert precisions == [torch.bfloat16]  # was float32: not what the evaluation ran in


def test_a_study_runs_and_a_second_invocation_skips_finished_runs(tmp_path):
    study = tmp_path / "study"
    arguments = ["--config-file", TINY_TOY_CONFIG, "--output", str(study), "--variants", "no_top_down", "--seeds", "1",
                 "--flop-images", "1", "--latency-rounds", "5", "--threads", "1",
                 "train.max_iter=3", "train.checkpointer.period=1", "dataloader.train.total_batch_size=1"]
    first = _run(*arguments, data_root=tmp_path / "data")
    assert first.returncode == 0, first.stderr[-2000:]
    with open(study / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["seed"]) for r in rows] == [("no_top_down", "1")]
    assert all(float(r["gflops"]) > 0 and float(r["latency_ms"]) > 0 and r["AP"] != "" for r in rows)
    assert (study / "ablation.png").stat().st_size > 10_000
    assert "| no_top_down | 1 |" in (study / "ablation.md").read_text()
    # evaluated once, by its --eval-only command: the training's own final evaluation doubled the test-set inference
    # and was timed as training
    assert (study / "no_top_down" / "seed1" / "ablation_output.txt").read_text().count("Start inference on") == 1
    weights = study / "no_top_down" / "seed1" / "model_final.pth"
    # the last numbered checkpoint is all a resume needs
    assert [p.name for p in weights.parent.glob("model_0*.pth")] == ["model_0000001.pth"]
    modified = weights.stat().st_mtime_ns
    second = _run(*arguments, data_root=tmp_path / "data")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "run 1/1: no_top_down, seed 1: finished earlier, skipped" in second.stdout
    assert weights.stat().st_mtime_ns == modified


def test_runs_of_other_overrides_are_refused_not_mixed_into_the_study(tmp_path):
    # started elsewhere with relative paths: the runs must be where this invocation looks for them (the children run
    # in the repository)
    arguments = ["--config-file", os.path.relpath(TINY_TOY_CONFIG, tmp_path), "--output", "study", "--variants", "full",
                 "--seeds", "1", "--flop-images", "1", "--latency-rounds", "5", "--threads", "1"]
    first = _run(*arguments, "train.max_iter=1", "dataloader.train.total_batch_size=1", data_root=tmp_path / "data",
                 cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    report = (tmp_path / "study" / "ablation.md").read_text()
    assert "- every variant (given after the variant's own): `train.max_iter=1` `dataloader.train.total_batch_size=1`" \
        in report
    weights = tmp_path / "study" / "full" / "seed1" / "model_final.pth"
    modified = weights.stat().st_mtime_ns
    second = _run(*arguments, "train.max_iter=2", "dataloader.train.total_batch_size=1",
                  "model.transformer.foreground_selector.keep_ratio=0.2", data_root=tmp_path / "data", cwd=tmp_path)
    errors = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(errors) == 1, second.stderr[-2000:]
    assert errors[0].startswith(f"error: {tmp_path / 'study' / 'full' / 'seed1'} holds a run started with other "
                                "settings (model.transformer.foreground_selector.keep_ratio: (not set), now 0.2; "
                                "train.max_iter: 1, now 2)")
    # the same settings at another thread count, which alone changes the trained weights: was reused as finished
    other_threads = arguments[:-1] + ["2"]  # --threads 2
    third = _run(*other_threads, "train.max_iter=1", "dataloader.train.total_batch_size=1",
                 data_root=tmp_path / "data", cwd=tmp_path)
    assert third.returncode == 2 and third.stderr.strip().endswith(
        "holds a run started with other settings (CPU threads (--threads): 1, now 2): give a new --output for these "
        f"settings, or delete {tmp_path / 'study' / 'full' / 'seed1'} to train that run again with them"), third.stderr
    assert weights.stat().st_mtime_ns == modified and (tmp_path / "study" / "ablation.md").read_text() == report


def test_a_study_started_ignoring_ctrl_c_stops_on_sigterm_and_its_training_saves(tmp_path):
    # a script's background job ignores SIGINT, and so did the training it started: the SIGINT the study forwarded
    # on a stop was ignored there, and the study waited for the whole training
    import signal
    import time

    study = tmp_path / "study"
    arguments = ["--config-file", TINY_TOY_CONFIG, "--output", str(study), "--variants", "full", "--seeds", "1",
                 "--threads", "1", "train.max_iter=100000", "train.log_period=1", "dataloader.train.total_batch_size=1"]
    process = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "tools", "ablate.py"), *arguments],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                               env=toy_subprocess_env(tmp_path / "data"),
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    output = study / "full" / "seed1" / "ablation_output.txt"
    deadline = time.monotonic() + 300
    while not (output.exists() and " iter: 2 " in output.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)  # meant for the script that started it in the background
    time.sleep(2)
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert "ablation stopped by SIGTERM" in err
    assert (study / "full" / "seed1" / "last_checkpoint").exists()  # the training saved where it stopped
