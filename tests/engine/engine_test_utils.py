"""Paths, helpers and fixtures shared by the engine and tool tests.

A uniquely named module rather than a ``conftest.py``: ``tests/conftest.py`` is imported as ``conftest`` by other
tests, and a second module of that name would shadow it. Test modules import the fixtures they use from here.
"""
import importlib.util
import os
import sys

import pytest

ENGINE_TESTS = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(ENGINE_TESTS))
TOY_CONFIG = os.path.join(ENGINE_TESTS, "toy_config.py")
TOY_DATASET = "focus_detr_toy"

if ENGINE_TESTS not in sys.path:  # toy_config.py imports toy_detector; spawned DDP workers inherit sys.path
    sys.path.insert(0, ENGINE_TESTS)


def load_script(relative_path, name):
    """Imports a script of the repository (train_net.py, tools/*.py, demo/demo.py) as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def train_net():
    return load_script("train_net.py", "train_net")


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory):
    """Registers the synthetic toy dataset (tests/engine/toy_detector.py) as ``focus_detr_toy``."""
    from toy_detector import register_toy_dataset

    return register_toy_dataset(TOY_DATASET, str(tmp_path_factory.mktemp("toy_data")))
