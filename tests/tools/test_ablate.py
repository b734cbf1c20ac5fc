"""tools/ablate.py: the command line (overrides printed, bad arguments one line), a whole tiny study that a second
invocation resumes without training again, and one whose runs a command with other overrides may not reuse."""
import csv
import os
import subprocess
import sys

import pytest
from tools_test_utils import REPO_ROOT, load_script

TREES_CONFIG = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")


@pytest.fixture(scope="module")
def ablate():
    return load_script("tools/ablate.py", "ablate_tool")


def _run(*arguments, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "ablate.py"), *arguments],
                          capture_output=True, text=True, cwd=cwd)


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
    ],
)
def test_bad_arguments_are_one_line(ablate, tmp_path, arguments, message):
    with pytest.raises(ValueError) as error:
        ablate.main(ablate.parse_args(["--config-file", TREES_CONFIG, "--output", str(tmp_path), *arguments]))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_study_runs_and_a_second_invocation_skips_finished_runs(tmp_path):
    arguments = ["--config-file", TREES_CONFIG, "--output", str(tmp_path), "--variants", "no_top_down", "--seeds", "1", "--flop-images", "1", "--latency-rounds", "5", "--threads", "1",
                 "train.max_iter=1", "dataloader.train.total_batch_size=1"]
    first = _run(*arguments)  # ~20 s on 2 cores: one training iteration, one evaluation, the measurements
    assert first.returncode == 0, first.stderr[-2000:]
    with open(tmp_path / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["seed"]) for r in rows] == [("no_top_down", "1")]
    assert all(float(r["gflops"]) > 0 and float(r["latency_ms"]) > 0 and r["AP"] != "" for r in rows)
    assert (tmp_path / "ablation.png").stat().st_size > 10_000
    assert "| no_top_down | 1 |" in (tmp_path / "ablation.md").read_text()
    weights = tmp_path / "no_top_down" / "seed1" / "model_final.pth"
    modified = weights.stat().st_mtime_ns
    second = _run(*arguments)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "run 1/1: no_top_down, seed 1: finished earlier, skipped" in second.stdout
    assert weights.stat().st_mtime_ns == modified


def test_runs_of_other_overrides_are_refused_not_mixed_into_the_study(tmp_path):
    # started elsewhere with relative paths: the runs must be where this invocation looks for them (the children run
    # in the repository)
    arguments = ["--config-file", os.path.relpath(TREES_CONFIG, tmp_path), "--output", "study", "--variants", "full",
                 "--seeds", "1", "--flop-images", "1", "--latency-rounds", "5", "--threads", "1"]
    first = _run(*arguments, "train.max_iter=1", "dataloader.train.total_batch_size=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    report = (tmp_path / "study" / "ablation.md").read_text()
    assert "- every variant (given after the variant's own): `train.max_iter=1` `dataloader.train.total_batch_size=1`" \
        in report
    weights = tmp_path / "study" / "full" / "seed1" / "model_final.pth"
    modified = weights.stat().st_mtime_ns
    second = _run(*arguments, "train.max_iter=2", "dataloader.train.total_batch_size=1",
                  "model.transformer.foreground_selector.keep_ratio=0.2", cwd=tmp_path)
    errors = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(errors) == 1, second.stderr[-2000:]
    assert errors[0].startswith(f"error: {tmp_path / 'study' / 'full' / 'seed1'} holds a run started with other "
                                "settings (model.transformer.foreground_selector.keep_ratio: (not set), now 0.2; "
                                "train.max_iter: 1, now 2)")
    assert weights.stat().st_mtime_ns == modified and (tmp_path / "study" / "ablation.md").read_text() == report
