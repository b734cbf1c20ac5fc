"""Every entry point that reads weights (train_net training and --eval-only, the demo, the conversion and parity
tools) refuses a code-running file of any format with one line naming it, and runs none of its code."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

from tools_test_utils import FIXTURE_CONFIG, REPO_ROOT, load_script, toy_dataset  # noqa: F401 (fixture)

sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "checkpoint"))
from cli_output import error_lines, shows_traceback  # noqa: E402 (tests/engine, on sys.path via tools_test_utils)
from hostile_files import MALICIOUS_FORMATS, damaged_files, write_malicious  # noqa: E402

TOY_CONFIG = os.path.join(REPO_ROOT, "tests", "engine", "toy_config.py")


def _train_net(path, tmp_path, eval_only):
    train_net = load_script("train_net.py", "train_net_weights")
    argv = ["--config-file", TOY_CONFIG, f"train.init_checkpoint={path}", f"train.output_dir={tmp_path / 'out'}",
            "train.max_iter=1"]
    return train_net.cli(argv + (["--eval-only"] if eval_only else []))


def _demo(path, tmp_path):
    from focus_detr.engine.cli import run_reporting_errors

    demo = load_script("demo/demo.py", "demo_weights")
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(image)
    args = demo.parse_args(["--config-file", TOY_CONFIG, "--input", str(image), "--output", str(tmp_path / "demo"),
                            "--opts", f"train.init_checkpoint={path}"])
    return run_reporting_errors(demo.main, args)


def _tool(script, argv):
    from focus_detr.engine.cli import run_reporting_errors

    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))  # make_parity_fixture imports check_parity
    return run_reporting_errors(load_script(f"tools/{script}.py", script).main, argv)


ENTRY_POINTS = {
    "train_net --eval-only": lambda path, tmp: _train_net(path, tmp, eval_only=True),
    "train_net training": lambda path, tmp: _train_net(path, tmp, eval_only=False),
    "demo": _demo,
    "convert_detrex_checkpoint": lambda path, tmp: _tool("convert_detrex_checkpoint", [path, str(tmp / "out.pth")]),
    "check_parity": lambda path, tmp: _tool("check_parity", ["--fixture", path]),
    "make_parity_fixture": lambda path, tmp: _tool(
        "make_parity_fixture", ["--config-file", FIXTURE_CONFIG, "--output", str(tmp / "f.pt"), "--weights", path]
    ),
}


@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
@pytest.mark.parametrize("name", MALICIOUS_FORMATS)
def test_malicious_weights_run_no_code_and_get_one_line(entry_point, name, toy_dataset, tmp_path, capsys):
    marker = tmp_path / "marker"
    path = write_malicious(tmp_path / name, marker)
    code = ENTRY_POINTS[entry_point](path, tmp_path)
    captured = capsys.readouterr()
    assert not marker.exists(), "the file's code ran"
    assert code == 2
    assert error_lines(captured.err) == [f"error: cannot read checkpoint {path}: it refers to posix.system, which is not allowed in a "
                      f"weights file ({'only arrays' if name.endswith(('.pkl', '.weights')) else 'only tensors'}, "
                      "numbers, strings and containers)"]
    assert not shows_traceback(captured.out + captured.err)


def test_damaged_weights_get_one_line_naming_the_file_from_train_net(toy_dataset, tmp_path, capsys):
    for description, path in damaged_files(tmp_path).items():
        code = _train_net(path, tmp_path, eval_only=True)
        captured = capsys.readouterr()
        assert code == 2, description
        verb = "use" if "layout" in description else "read"
        lines = error_lines(captured.err)
        assert len(lines) == 1 and lines[0].startswith(f"error: cannot {verb} checkpoint {path}: "), (description, lines)
        assert not shows_traceback(captured.out + captured.err), description
