"""Inference reads nothing back from the device but its final detection counts, and the per-size tensors it reuses
(token layout, budgets) change no result."""
import torch
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from conftest import build_tiny_model
from focus_detr.analysis.dispatch_counts import dispatch_counts
from focus_detr.modeling.detections import rescale_detections
from focus_detr.modeling.token_layout import build_token_layout, token_layout


def _model():
    torch.manual_seed(0)
    return build_tiny_model().eval()


def _image(height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)}


def test_inference_after_the_first_call_at_a_size_reads_only_the_detection_count():
    model = _model()
    items = [_image(96, 128)]
    with torch.no_grad():
        model(items)
        counts = dispatch_counts(lambda: model(items), record_sites=True)
    # one read: how many of the top detections are non-empty boxes (the length of the returned Instances)
    assert counts.syncs == 1, counts.sync_sites
    (site,) = counts.sync_sites
    assert "rescale_detections" in site
    # so the network itself (what engine.cuda_graphs captures) reads nothing and uploads nothing
    images = model.preprocess_image(items)
    with torch.no_grad():
        assert dispatch_counts(lambda: model.detect(images)).syncs == 0
    # a batch of several images of different sizes (padding) reads no more
    batch = [_image(96, 128), _image(64, 96, seed=1)]
    with torch.no_grad():
        model(batch)
        assert dispatch_counts(lambda: model(batch)).syncs == 1


# Operators of one tiny-model inference at 96x128 after a warm-up (745 before the sampling rows were built once per
# forward, 697 before the decoder stopped normalising and refining what inference does not read). Each is host work,
# and a kernel launch on a GPU: a change that adds some should say so by raising this.
TINY_INFERENCE_OPERATORS = 657


def test_inference_operator_count_does_not_grow():
    model = _model()
    items = [_image(96, 128)]
    with torch.no_grad():
        model(items)
        operators = dispatch_counts(lambda: model(items)).operators
    assert operators <= TINY_INFERENCE_OPERATORS, (
        f"{operators} operators per tiny inference, up from {TINY_INFERENCE_OPERATORS}: see docs/benchmarks.md"
    )


def test_reused_layouts_give_the_detections_of_freshly_built_ones(monkeypatch):
    model = _model()
    items = [_image(96, 128)]
    with torch.no_grad():
        model(items)  # fills the cache at this size
        cached = model(items)[0]["instances"]
        import focus_detr.modeling.focus_detr as meta_arch

        monkeypatch.setattr(meta_arch, "token_layout", build_token_layout)
        fresh = model(items)[0]["instances"]
    assert torch.equal(cached.pred_boxes.tensor, fresh.pred_boxes.tensor)
    assert torch.equal(cached.scores, fresh.scores)


def test_a_layout_first_built_in_inference_mode_serves_training():
    model = _model()
    args = ([(32, 40)], (32, 40), [(4, 5), (2, 3)], model.position_embedding, 0.05, "cpu")
    with torch.inference_mode():
        layout = token_layout(*args)
    assert token_layout(*args) is layout  # reused
    assert not layout.position_embeddings.is_inference() and not layout.position_embeddings.requires_grad
    assert layout.valid_token_nums == (26,) and not layout.any_padding
    padded = token_layout([(32, 40), (16, 40)], (32, 40), [(4, 5), (2, 3)], model.position_embedding, 0.05, "cpu")
    assert padded.valid_token_nums == (26, 13) and padded.any_padding


def test_rescaled_detections_equal_detectron2_postprocessing():
    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(50, 4, generator=generator) * 120 - 10
    boxes[:5, 2] = boxes[:5, 0]  # empty boxes are dropped
    scores, classes = torch.rand(50, generator=generator), torch.randint(0, 3, (50,), generator=generator)
    for output_size in ((100, 120), (200, 150)):
        def result():
            return Instances((100, 120), pred_boxes=Boxes(boxes.clone()), scores=scores, pred_classes=classes)

        expected = detector_postprocess(result(), *output_size)
        (ours,) = rescale_detections([result()], [output_size])
        assert ours.image_size == expected.image_size and len(ours) == len(expected) < 50
        assert torch.equal(ours.pred_boxes.tensor, expected.pred_boxes.tensor)
        assert torch.equal(ours.scores, expected.scores) and torch.equal(ours.pred_classes, expected.pred_classes)


def test_a_training_step_counted_on_the_cpu_waits_for_a_gpu_where_a_gpu_run_would():
    # counted on the CPU, the copies of the data loader's images and targets to the device (no-ops there) were left
    # out, and the checks of the targets in host memory counted as GPU waits
    from focus_detr.analysis.inputs import synthetic_training_batch

    model = _model().train()
    batch = synthetic_training_batch(96, 128, 2, 3, model.num_classes)

    def step():
        sum(model(batch).values()).backward()

    step()
    counts = dispatch_counts(step, record_sites=True, host_data=batch)
    assert counts.syncs_by_reason == {"Tensor.to: copy between devices (host data to the device)": 6,
                                      "aten.nonzero: data-dependent output size": 1,
                                      "Tensor.cpu: copy to the host": 1}, counts.sync_sites
    copies = {site.rsplit(" ", 1)[1]: count for site, count in counts.sync_sites.items()}
    assert copies["(preprocess_image)"] == 2 and copies["(prepare_targets)"] == 4  # each image; labels, boxes
