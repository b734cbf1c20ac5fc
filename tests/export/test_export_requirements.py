"""onnx and onnxruntime are required (requirements/export.txt; scripts/setup_env.sh installs them). The ONNX test
modules skip without them, because `pytest -m gpu` on a GPU machine's bundle, which has neither
(scripts/gpu_check.sh), must still collect: one module failing to import interrupts the whole run. In the full suite
their absence is this one failure, not a row of silent skips."""
import importlib

import pytest


@pytest.mark.parametrize("package", ["onnx", "onnxruntime"])
def test_the_onnx_test_dependencies_are_installed(package):
    try:
        importlib.import_module(package)
    except ImportError as error:
        pytest.fail(f"{package} does not import ({error}), so every ONNX test is skipped: install "
                    "requirements/export.txt (scripts/setup_env.sh does)", pytrace=False)
