"""Inference replayed from CUDA graphs (``focus_detr.engine.cuda_graphs``).

On the CPU, the graph itself is replaced by a stand-in (``stand_in_cuda_graphs`` in conftest.py) whose replay
reruns the captured function on the static input and writes into the same output tensors, as a replayed graph does:
this checks the bookkeeping around it
(which calls capture, fresh pixels reach the graph, outputs survive the next replay, sizes and precisions get their
own graph, the cache bound, weight changes, failed or differing captures fall back to eager). The real capture is
checked against eager inference on a GPU (skipped here).
"""
import logging
import re

import pytest
import torch
from torch import nn

from conftest import build_tiny_model
from focus_detr.engine.config import ConfigError
from focus_detr.engine.cuda_graphs import CUDAGraphInference, OutsideTensors, inference_cuda_graphs


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_tiny_model().eval()


@pytest.fixture(autouse=True)
def _eager_inference_without_autograd():
    # The graphs replay inference as the predictor and inference_on_dataset run it, without autograd; an eager call
    # with autograd (bfloat16 autocast on the CPU) takes other paths and rounds differently.
    with torch.no_grad():
        yield


def _images(*sizes, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)} for h, w in sizes]


def _assert_same(expected, actual):
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        a, b = a["instances"], b["instances"]
        assert a.image_size == b.image_size
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_classes, b.pred_classes)


def test_replays_give_the_eager_detections_of_each_new_image(model, stand_in_cuda_graphs):
    graphed = CUDAGraphInference(model)
    frames = [_images((96, 128), seed=seed) for seed in range(4)]
    outputs = [graphed(frame) for frame in frames]
    assert stand_in_cuda_graphs.captures == 1
    assert graphed.counts == {"eager": 1, "captured": 1, "replayed": 2}
    for frame, output in zip(frames, outputs):  # also: a later replay did not overwrite an earlier result
        _assert_same(model(frame), output)


def test_sizes_and_precisions_get_their_own_graph_within_the_bound(model, stand_in_cuda_graphs, caplog):
    graphed = CUDAGraphInference(model, max_graphs=2)
    sizes = [(96, 128), (128, 96), (64, 64)]
    for size in sizes:
        for _ in range(2):
            graphed(_images(size))
    assert stand_in_cuda_graphs.captures == 3 and len(graphed._graphs) == 2  # the first size was dropped
    graphed(_images(sizes[0]))  # seen twice before: captured again at once
    assert stand_in_cuda_graphs.captures == 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        graphed(_images(sizes[0]))
        assert stand_in_cuda_graphs.captures == 4  # a first call in bfloat16 runs eagerly
        _assert_same(model(_images(sizes[0])), graphed(_images(sizes[0])))
    assert stand_in_cuda_graphs.captures == 5
    batch = _images((96, 128), (80, 128))
    graphed(batch)
    _assert_same(model(batch), graphed(batch))
    assert stand_in_cuda_graphs.captures == 6


def test_new_weights_drop_the_graphs(model, stand_in_cuda_graphs):
    local = build_tiny_model().eval()
    local.load_state_dict(model.state_dict())
    graphed = CUDAGraphInference(local)
    frame = _images((96, 128))
    graphed(frame), graphed(frame)
    assert stand_in_cuda_graphs.captures == 1
    with torch.no_grad():
        local.class_embed[-1].bias.add_(0.5)  # in place, as load_state_dict does
    output = graphed(frame)
    assert len(graphed._graphs) == 0 and graphed.counts["eager"] == 2
    _assert_same(local(frame), output)
    local.class_embed[-1].bias = nn.Parameter(local.class_embed[-1].bias + 0.5)  # a new parameter object
    graphed(frame), graphed(frame)
    assert stand_in_cuda_graphs.captures == 2
    local.class_embed[-1].bias = nn.Parameter(local.class_embed[-1].bias - 1.0)
    _assert_same(local(frame), graphed(frame))


@pytest.mark.parametrize("failure", ["raises", "differs"])
def test_a_signature_that_cannot_be_replayed_runs_eagerly(model, stand_in_cuda_graphs, caplog, failure):
    graphed = CUDAGraphInference(model)
    if failure == "raises":
        stand_in_cuda_graphs.fail = RuntimeError("operation not permitted when stream is capturing\nmore detail")
    else:
        stand_in_cuda_graphs.corrupt = True
    frame = _images((96, 128))
    with caplog.at_level(logging.WARNING, logger="focus_detr.engine.cuda_graphs"):
        outputs = [graphed(frame) for _ in range(4)]
    for output in outputs:
        _assert_same(model(frame), output)
    assert graphed.counts == {"eager": 4, "not_captured": 1}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "runs eagerly" in warnings[0] and "\n" not in warnings[0]
    assert ("operation not permitted" in warnings[0]) == (failure == "raises")


def test_token_selection_replays_with_the_detections(model, stand_in_cuda_graphs):
    graphed = CUDAGraphInference(model)
    frames = [_images((96, 128), (96, 112), seed=seed) for seed in range(3)]
    outputs = [graphed.forward_inference(frame, return_token_selection=True) for frame in frames]
    assert graphed.counts == {"eager": 1, "captured": 1, "replayed": 1}
    for frame, output in zip(frames, outputs):
        expected = model.forward_inference(frame, return_token_selection=True)
        _assert_same(expected, output)
        for want, got in zip(expected, output):
            assert (want["image_size"], want["padded_size"]) == (got["image_size"], got["padded_size"])
            want, got = want["token_selection"], got["token_selection"]
            assert want.keys() == got.keys()
            for name in want:
                pairs = zip(want[name], got[name]) if isinstance(want[name], list) else [(want[name], got[name])]
                assert all(torch.equal(a, b) for a, b in pairs), name
    graphed(frames[0])  # without the selection: a signature of its own
    assert graphed.counts["eager"] == 2


def test_the_config_switch_is_checked_in_one_line():
    cfg = {"train": {"inference_cuda_graphs": {"enabled": True, "max_graphs": 2}}}
    assert inference_cuda_graphs(cfg) == {"max_graphs": 2}
    assert inference_cuda_graphs({"train": {}}) is None
    assert inference_cuda_graphs({"train": {"inference_cuda_graphs": {"enabled": False}}}) is None
    for settings, words in (({"enabled": "yes"}, "enabled must be True or False"),
                            ({"enabled": True, "max_graphs": 0}, "max_graphs must be an integer >= 1"),
                            ({"enabled": True, "max_graph": 2}, "unknown keys ['max_graph']")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            inference_cuda_graphs({"train": {"inference_cuda_graphs": settings}})
    with pytest.raises(TypeError, match="needs a model with preprocess_image, detect"):
        CUDAGraphInference(nn.Linear(2, 2))


def test_training_mode_and_cpu_call_the_model_as_is(model):
    graphed = CUDAGraphInference(model)
    frame = _images((96, 128))
    for _ in range(3):
        _assert_same(model(frame), graphed(frame))
    assert graphed.counts == {}  # on the CPU: no graph bookkeeping at all
    with pytest.raises(ValueError, match="max_graphs"):
        CUDAGraphInference(model, max_graphs=0)
    with pytest.raises(ValueError, match="capture_after"):
        CUDAGraphInference(model, capture_after=0)


def test_outside_tensors_are_what_a_region_reads_but_did_not_write():
    linear = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    cache = torch.randn(3)
    with torch.no_grad(), OutsideTensors() as outside:
        hidden = linear(x).relu()
        out = hidden * 2 + hidden.t().t() + cache
        out.add_(1)
    held = {t.untyped_storage().data_ptr() for t in outside.tensors}
    expected = {t.untyped_storage().data_ptr() for t in (linear.weight, linear.bias, x, cache)}
    assert held == expected
    assert out.untyped_storage().data_ptr() not in held


def test_what_a_graph_of_the_model_reads_from_outside_is_found(model):
    images = model.preprocess_image(_images((96, 128)))
    with torch.no_grad():
        expected = model.detect(images)
        with OutsideTensors() as outside:
            detections = model.detect(images)
    assert all(torch.equal(a, b) for a, b in zip(expected, detections))  # the mode changes nothing
    held = {t.untyped_storage().data_ptr() for t in outside.tensors}
    assert images.tensor.untyped_storage().data_ptr() in held
    folded = [m.__dict__["_folded_cache"] for m in model.modules() if "_folded_cache" in m.__dict__]
    assert folded and all(weight.untyped_storage().data_ptr() in held for _, weight, _ in folded)
    assert model.class_embed[-1].weight.untyped_storage().data_ptr() in held
    assert not any(t.untyped_storage().data_ptr() in held for t in detections)


def test_under_autocast_a_region_after_a_warm_up_reads_the_cached_weight_casts():
    # what a bfloat16 graph reads instead of casting the weights on every replay
    linear = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        linear(x)
        with OutsideTensors() as outside:
            linear(x)
    held = {(t.dtype, tuple(t.shape)) for t in outside.tensors}
    assert held == {(torch.float32, (2, 4)), (torch.bfloat16, (3, 4)), (torch.bfloat16, (3,))}


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_graph_replays_equal_eager_inference_on_a_gpu(precision):
    torch.manual_seed(0)
    model = build_tiny_model().eval().cuda()
    graphed = CUDAGraphInference(model, max_graphs=2)
    with torch.autocast("cuda", dtype=precision or torch.float32, enabled=precision is not None):
        for size in [(96, 128), (128, 96), (96, 128)]:
            frames = [_images(size, seed=seed) for seed in range(3)]
            outputs = [graphed(frame) for frame in frames]
            for frame, output in zip(frames, outputs):
                _assert_same(model(frame), output)
    assert graphed.counts["captured"] == 2 and graphed.counts["replayed"] >= 4
    assert "not_captured" not in graphed.counts


def test_a_batch_of_mixed_sizes_is_warned_of_as_by_the_model(caplog):
    # the wrapper calls the model's pieces itself, which skipped the model's warning
    graphed = CUDAGraphInference(build_tiny_model().eval())
    with caplog.at_level("WARNING", logger="focus_detr"), torch.no_grad():
        graphed(_images((96, 128), (64, 96)))
    assert "a batch of images of different sizes (96x128, 64x96)" in caplog.text
