"""Helpers shared by the export tests: the tiny model with the official weights, copies of the tiny graph with other
metadata, images, the comparison with PyTorch. The graph itself and the export tool are session fixtures of
``tests/conftest.py`` (``tiny_export``, ``export_tool``, ``fixture_checkpoint``).

A uniquely named module rather than a ``conftest.py`` (``tests/conftest.py`` is imported as ``conftest``).
"""
import json
import shutil
import sys

import torch

from conftest import REPO_ROOT, build_tiny_model

sys.path.insert(0, str(REPO_ROOT / "tests" / "tools"))  # the export tests' tools_test_utils (load_script)


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
