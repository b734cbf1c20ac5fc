"""Paths given to the export tools are checked before any work, each with one line naming what is wrong."""
import sys

import pytest

from conftest import REPO_ROOT, TINY_CONFIG

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

sys.path.insert(0, str(REPO_ROOT / "tests" / "tools"))
from tools_test_utils import load_script  # noqa: E402

from focus_detr.engine.cli import run_reporting_errors  # noqa: E402
from focus_detr.export import OnnxPredictor  # noqa: E402


def test_an_output_folder_that_is_a_file_is_named(tmp_path, capsys):
    export_tool = load_script("tools/export_model.py", "export_model")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    args = export_tool.parse_args(["--config-file", str(TINY_CONFIG), "--output", str(blocker)])
    assert run_reporting_errors(export_tool.main, args) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --output {blocker} cannot be created: {blocker} is a file, not a folder"
    )


def test_a_folder_given_as_the_graph_names_the_graph_inside(tmp_path):
    with pytest.raises(ValueError, match=rf"^ONNX model {tmp_path} is a folder; name the .onnx file$"):
        OnnxPredictor(str(tmp_path))
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match=rf"is a folder; name the .onnx file \(e.g. {tmp_path}/model.onnx\)$"):
        OnnxPredictor(str(tmp_path))
