"""Fixtures and helpers shared by the export tests: the export tool, the official tiny weights as a checkpoint, the
tiny configuration exported once, and copies of that graph with other metadata.

A uniquely named module rather than a ``conftest.py`` (``tests/conftest.py`` is imported as ``conftest``); test
modules import the fixtures they use from here.
"""
import json
import shutil
import sys

import pytest
import torch

from conftest import REPO_ROOT, TINY_CONFIG, build_tiny_model

sys.path.insert(0, str(REPO_ROOT / "tests" / "tools"))
from tools_test_utils import load_script  # noqa: E402


@pytest.fixture(scope="module")
def export_tool():
    return load_script("tools/export_model.py", "export_model")


@pytest.fixture(scope="module")
def fixture_checkpoint(parity_fixture, tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "official_tiny.pth"
    torch.save({"model": parity_fixture["state_dict"]}, path)
    return path


@pytest.fixture(scope="module")
def tiny_export(export_tool, fixture_checkpoint, tmp_path_factory):
    """The tiny configuration with the fixture's official weights, exported by the tool at 224x288."""
    output = tmp_path_factory.mktemp("tiny_onnx")
    failures = export_tool.main(export_tool.parse_args([
        "--config-file", str(TINY_CONFIG), "--output", str(output), "--sample-size", "224", "288", "--threads", "1",
        f"+train.init_checkpoint={fixture_checkpoint}",
    ]))
    assert failures == []
    return output


def tiny_model(parity_fixture):
    """The tiny configuration with the fixture's official weights, in eval mode."""
    from focus_detr.checkpoint import FocusDETRCheckpointer

    model = build_tiny_model()
    FocusDETRCheckpointer(model).load_model_state(parity_fixture["state_dict"])
    return model.eval()


def copy_graph(tiny_export, folder, metadata_changes=None):
    """The tiny graph copied into ``folder`` with its model.json updated by ``metadata_changes``, or without
    model.json (a graph exported elsewhere) when that is None. Returns the graph's path."""
    folder.mkdir()
    shutil.copy(tiny_export / "model.onnx", folder / "model.onnx")
    if metadata_changes is not None:
        metadata = json.loads((tiny_export / "model.json").read_text())
        (folder / "model.json").write_text(json.dumps({**metadata, **metadata_changes}))
    return str(folder / "model.onnx")


def noise_png(path, shape=(30, 400, 3)):
    """A random-noise PNG (without a test loader in the tiny config the demo resizes to 800/1333: a thin image stays
    small, 100x1333)."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return str(path)


def check_against_pytorch(model, predictor, sizes, seed=1):
    """``predictor`` (an OnnxPredictor) against ``model`` on a synthetic image of each size: top-100 detections
    matched (class, IoU >= 0.99, |d score| <= 1e-3), the same token counts."""
    from focus_detr.analysis.inputs import synthetic_inputs
    from focus_detr.export import match_detections

    for height, width in sizes:
        item = synthetic_inputs(height, width, seed=seed)[0]
        with torch.no_grad():
            reference = model.forward_inference([item], return_token_selection=True)[0]
        outputs = predictor.run(item["image"])
        instances = predictor(item["image"], height, width)
        assert len(instances) == len(reference["instances"]) == model.num_detections
        assert match_detections(reference["instances"], instances, top=100) == (100, 100), (height, width)
        selection = reference["token_selection"]
        assert outputs["encoder_token_counts"].tolist() == [len(i) for i in selection["foreground_inds"]]
        assert outputs["fine_grained_token_counts"].tolist() == [len(i) for i in selection["fine_grained_inds"]]
        num_tokens = int(selection["spatial_shapes"].prod(1).sum())
        assert outputs["num_queries"].tolist() == [min(model.transformer.num_queries, num_tokens)]
