"""The export API's arguments: a wrong type or value is one line naming the argument (not onnxruntime's several-line
pybind TypeError, a str-int comparison or a silently taken default), and export_onnx leaves the caller's model in the
train / eval mode it had."""
import pathlib

import numpy as np
import pytest
import torch

from conftest import build_tiny_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from focus_detr.export import OnnxPredictor, export_onnx  # noqa: E402

SAMPLE = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def training_model():
    """The tiny model in training mode, with its backbone frozen in eval mode (as a fine-tuning run may have it)."""
    model = build_tiny_model().train()
    model.backbone.eval()
    return model


@pytest.fixture(scope="module")
def graph(training_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("graph") / "model.onnx"
    export_onnx(training_model, str(path), SAMPLE)
    return path


def _modes(model):
    return {name: module.training for name, module in model.named_modules()}


def test_export_leaves_every_part_of_the_model_in_its_own_mode(training_model, graph):
    assert graph.is_file()
    assert training_model.training and training_model.transformer.training
    assert not any(module.training for module in training_model.backbone.modules())


class _ExportFailed(Exception):
    pass


def test_a_failed_export_also_leaves_the_model_in_its_own_mode(training_model, tmp_path, monkeypatch):
    training_model.train()
    training_model.backbone.eval()
    before = _modes(training_model)
    during = {}

    def failing_export(*args, **kwargs):
        during.update(_modes(training_model))
        raise _ExportFailed("the exporter failed")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    with pytest.raises(_ExportFailed):
        export_onnx(training_model, str(tmp_path / "model.onnx"), SAMPLE)
    assert during.keys() == before.keys() and not any(during.values())  # traced in eval mode
    assert _modes(training_model) == before


@pytest.mark.parametrize("opset, error_type, message", [
    ("17", TypeError, "opset must be an int (the ONNX opset version, e.g. 17), got str '17'"),
    (17.0, TypeError, "opset must be an int (the ONNX opset version, e.g. 17), got float 17.0"),
    (True, TypeError, "opset must be an int (the ONNX opset version, e.g. 17), got bool True"),
])
def test_an_opset_that_is_not_an_int_is_named(training_model, tmp_path, opset, error_type, message):
    with pytest.raises(error_type) as error:
        export_onnx(training_model, str(tmp_path / "model.onnx"), SAMPLE, opset=opset)
    assert str(error.value) == message


def test_a_sample_image_of_another_type_is_named_by_its_type(training_model, tmp_path):
    with pytest.raises(TypeError) as error:
        export_onnx(training_model, str(tmp_path / "model.onnx"), SAMPLE.numpy())
    assert str(error.value) == (
        "sample_image must be a uint8 (3, H, W) torch tensor, got a numpy array (torch.from_numpy converts it)"
    )
    with pytest.raises(ValueError, match=r"^sample_image must be a uint8 \(3, H, W\) tensor, got torch.float32 "):
        export_onnx(training_model, str(tmp_path / "model.onnx"), SAMPLE.float())


@pytest.mark.parametrize("num_threads, error_type, shown", [
    ("2", TypeError, "str '2'"),
    (1.5, TypeError, "float 1.5"),
    (True, TypeError, "bool True"),
    (0, ValueError, "0"),
    (-1, ValueError, "-1"),
])
def test_num_threads_must_be_a_positive_int(graph, num_threads, error_type, shown):
    with pytest.raises(error_type) as error:
        OnnxPredictor(str(graph), num_threads=num_threads)
    assert str(error.value) == (
        f"OnnxPredictor: num_threads must be a positive int or None (onnxruntime's default), got {shown}"
    )


@pytest.mark.parametrize("path, shown", [(None, "NoneType None"), (3, "int 3"), (b"model.onnx", "bytes b'model.onnx'")])
def test_a_graph_path_that_is_no_path_is_named(path, shown):
    with pytest.raises(TypeError) as error:
        OnnxPredictor(path)
    assert str(error.value) == f"OnnxPredictor: path must be the model.onnx file (str or os.PathLike), got {shown}"


def test_a_pathlib_graph_path_and_an_int_like_thread_count_work(graph):
    predictor = OnnxPredictor(pathlib.Path(graph), num_threads=np.int64(1))
    assert predictor.path == str(graph)
    assert predictor.session.get_session_options().intra_op_num_threads == 1
    ours, reference = predictor(SAMPLE), OnnxPredictor(str(graph))(SAMPLE)
    assert len(reference) > 0  # else equal detections would be two empty lists
    torch.testing.assert_close(ours.scores, reference.scores)
    torch.testing.assert_close(ours.pred_boxes.tensor, reference.pred_boxes.tensor)
    assert torch.equal(ours.pred_classes, reference.pred_classes)
