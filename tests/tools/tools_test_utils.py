"""Paths shared by the tool tests (see tests/engine/engine_test_utils.py for why this is not a conftest.py)."""
import os
import sys

TOOLS_TESTS = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(TOOLS_TESTS))
TINY_TOY_CONFIG = os.path.join(TOOLS_TESTS, "tiny_focus_detr_toy_config.py")
FIXTURE_CONFIG = os.path.join(REPO_ROOT, "configs", "testing", "focus_detr_tiny_fixture.py")

sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "engine"))  # toy_detector, engine_test_utils
from engine_test_utils import TOY_DATASET, load_script, toy_dataset  # noqa: E402,F401
