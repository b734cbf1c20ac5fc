"""The ONNX forms of deformable attention: onnxruntime matches the PyTorch reference at sizes other than the traced
one, in standard operators only."""
import numpy as np
import pytest
import torch

from focus_detr.layers.ms_deform_attn_op import multi_scale_deformable_attention
from focus_detr.layers.ms_deform_attn_reference import multi_scale_deformable_attention_pytorch
from focus_detr.layers.ms_deform_attn_onnx import onnx_msda_symbolic
from msda_inputs import make_inputs

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

NAMES = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]


class _Attention(torch.nn.Module):
    def forward(self, *inputs):
        return multi_scale_deformable_attention(*inputs)


def _export(tmp_path, form, opset=17):
    path = str(tmp_path / f"msda_{form}.onnx")
    traced_with = make_inputs([(6, 8), (3, 4), (2, 2)], batch=1, queries=5, dtype=torch.float32)
    with onnx_msda_symbolic(opset, form):
        torch.onnx.export(
            _Attention(), traced_with, path, dynamo=False, opset_version=opset, input_names=NAMES,
            dynamic_axes={"value": {1: "S"}, "sampling_locations": {1: "Q"}, "attention_weights": {1: "Q"}},
        )
    return path


@pytest.mark.parametrize("form, opset", [("grid_sample", 16), ("grid_sample", 20), ("gather", 13), ("gather", 17)])
def test_onnx_form_matches_the_reference_at_other_sizes(tmp_path, form, opset):
    path = _export(tmp_path, form, opset)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert ("GridSample" in {node.op_type for node in model.graph.node}) == (form == "grid_sample")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    # other level sizes and query counts than traced; locations partly outside the maps (zero padding)
    for shapes, queries in (([(9, 5), (5, 3), (3, 2)], 7), ([(1, 1), (2, 3), (4, 1)], 1), ([(6, 8), (3, 4), (2, 2)], 12)):
        inputs = make_inputs(shapes, batch=1, queries=queries, dtype=torch.float32, seed=queries)
        expected = multi_scale_deformable_attention_pytorch(*inputs)
        (got,) = session.run(None, {name: t.numpy() for name, t in zip(NAMES, inputs)})
        assert got.shape == tuple(expected.shape)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=0)


def test_registration_is_checked_and_removed_on_exit(tmp_path):
    with pytest.raises(ValueError, match="opset >= 16"):
        with onnx_msda_symbolic(15, "grid_sample"):
            pass
    with pytest.raises(ValueError, match="opset >= 13"):
        with onnx_msda_symbolic(12, "gather"):
            pass
    with pytest.raises(ValueError, match="must be one of"):
        with onnx_msda_symbolic(17, "bilinear"):
            pass
    _export(tmp_path, "gather")
    # outside the context the exporter no longer knows the op (its error message varies with the torch version)
    with pytest.raises(Exception):
        torch.onnx.export(
            _Attention(), make_inputs([(2, 2)], batch=1, dtype=torch.float32), str(tmp_path / "plain.onnx"),
            dynamo=False, opset_version=17,
        )
