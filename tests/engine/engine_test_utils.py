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


def load_checkpoint(path):
    """A checkpoint file's dict, its tensors on the CPU."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def train_toy(train_net, output_dir, *overrides):
    """``train_net.py`` in this process on the toy config into ``output_dir``; returns its exit status."""
    return train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={output_dir}", *overrides])


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


def toy_subprocess_env(data_root):
    """Environment for a ``train_net.py`` subprocess on the toy config: it registers the toy data under
    ``data_root`` itself and finds tests/engine on its path; CPU only."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", FOCUS_DETR_TOY_DATA_ROOT=str(data_root), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ENGINE_TESTS, env.get("PYTHONPATH")]))
    return env


class TrainNetProcess:
    """``python train_net.py ARGV`` in its own process group (as a terminal runs a command), stdout and stderr in
    files under ``folder``; :meth:`wait_for` polls stdout for a pattern."""

    def __init__(self, argv, folder, data_root, tmpdir=None):
        import subprocess

        self.command = [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), *argv]
        self.stdout_path, self.stderr_path = os.path.join(folder, "stdout.txt"), os.path.join(folder, "stderr.txt")
        env = toy_subprocess_env(data_root)
        if tmpdir is not None:  # the process's (and its data-loading workers') temporary files go there
            env["TMPDIR"] = str(tmpdir)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=err, cwd=REPO_ROOT, env=env,
                                            start_new_session=True)

    @property
    def pid(self):
        return self.process.pid

    def stdout(self):
        with open(self.stdout_path, errors="replace") as f:
            return f.read()

    def stderr(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def wait_for(self, pattern, timeout=300):
        """Waits until stdout matches the regular expression ``pattern``; fails if the process ends first."""
        import re
        import time

        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.stdout()):
            if self.process.poll() is not None:
                pytest.fail(f"train_net.py ended ({self.process.returncode}) before printing {pattern!r}:\n"
                            f"{self.stderr()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"train_net.py did not print {pattern!r} within {timeout} s")
            time.sleep(0.02)

    def signal_group(self, number):
        """Sends signal ``number`` to the whole process group, as a terminal's Ctrl-C does."""
        import signal

        os.killpg(self.process.pid, signal.Signals(number))

    def wait(self, timeout=300):
        return self.process.wait(timeout=timeout)

    def kill(self):
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
