"""scripts/selection_quality_cost.py: bad input is one line, before the model and the test set are loaded."""
import os
import subprocess
import sys

import pytest

from focus_detr.engine.cli import run_reporting_errors

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO_ROOT, "scripts", "selection_quality_cost.py")
TREES_CONFIG = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")


def test_a_missing_checkpoint_is_one_line(tmp_path):
    missing = tmp_path / "model_final.pth"
    result = subprocess.run([sys.executable, SCRIPT, TREES_CONFIG, str(missing)], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: checkpoint not found: {missing}"


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "engine"))
    from engine_test_utils import load_script

    return load_script("scripts/selection_quality_cost.py", "selection_quality_cost")


@pytest.mark.parametrize("option", ["--rounds", "--threads"])
def test_zero_rounds_or_threads_are_refused_when_parsing(script, option, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_reporting_errors(script.main, [TREES_CONFIG, str(tmp_path / "unused.pth"), option, "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: argument {option}: must be >= 1, got 0")
