"""scripts/compare_revision.py: the working tree against a commit, in one process."""
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "compare_revision.py"


def _run(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_tree_model_against_head_gives_equal_outputs_and_both_ratios():
    # HEAD's model beside the working tree's (the same code in a clean clone), on small synthetic inputs
    result = _run("--rev", "HEAD", "--threads", "1", "--rounds", "1", "--images", "1", "--input-size", "64", "96",
                  "--train-size", "64", "64", "--train-batch-size", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "largest difference of boxes/scores 0\n" in result.stdout
    assert "largest loss difference in the first step 0 " in result.stdout
    assert result.stdout.count("x faster (median of per-round old/new ratios)") == 2


def test_unknown_revision_is_one_line():
    result = _run("--rev", "no-such-commit", "--tasks", "inference")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: --rev 'no-such-commit' is not a commit of {REPO_ROOT}"
