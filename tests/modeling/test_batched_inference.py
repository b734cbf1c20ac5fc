"""Batched inference (``tools/benchmark.py --batch-size``, a predictor fed several images) against one image per call.

Images of one size: each image gets the detections it gets alone, up to float rounding (a batched convolution or
matrix product may sum in another order). Images of different sizes are padded (bottom/right) to the largest; the
image that sets the padded size is unchanged, but a smaller one is not, for two reasons measured here with the tiny
configuration: (1) padding itself -- the backbone's convolutions see the padded pixels near the image's border, the
foreground predictor's per-level mean runs over padded tokens too, and the feature maps' valid region is the padding
mask resized to each level, which can hold one token row or column more than the image alone gives; (2) the batch's
token budget -- every encoder layer keeps the cascade ratio times the batch's *largest* foreground budget (as the
official model does), so a smaller image keeps more tokens than alone. Apart from those two, the batch is per image:
a padded image run alone, padded the same way and given the batch's budget, matches its batched result.
"""
import pytest
import torch
from detectron2.structures import ImageList

from conftest import build_tiny_model
from focus_detr.modeling.foreground_selector import ForegroundTokenSelector


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_tiny_model().eval()


def _images(*sizes):
    generator = torch.Generator().manual_seed(1)
    return [{"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)} for h, w in sizes]


def _detections(model, images: ImageList):
    with torch.no_grad():
        logits, boxes = model.predict(model.run_transformer(images))
    return model.postprocess(logits[-1], boxes[-1], images.image_sizes)


def _assert_same_detections(alone, batched):
    # float rounding only: scores differ by ~1e-7, boxes (pixels) not at all on x86 here
    assert torch.equal(alone.pred_classes, batched.pred_classes)
    assert torch.allclose(alone.scores, batched.scores, rtol=0, atol=1e-6)
    assert torch.allclose(alone.pred_boxes.tensor, batched.pred_boxes.tensor, rtol=0, atol=1e-3)


def test_a_batch_of_equal_size_images_gives_each_its_own_detections(model):
    items = _images((96, 128), (96, 128), (96, 128))
    with torch.no_grad():
        batched = model(items)
        alone = [model([item])[0] for item in items]
    assert len(batched) == 3
    for a, b in zip(alone, batched):
        _assert_same_detections(a["instances"], b["instances"])


def test_the_image_that_sets_the_padded_size_is_unchanged_by_smaller_ones(model):
    items = _images((96, 128), (64, 96))
    with torch.no_grad():
        batched = model(items)[0]["instances"]
        alone = model(items[:1])[0]["instances"]
    _assert_same_detections(alone, batched)


def test_a_padded_image_depends_on_the_rest_of_the_batch_only_through_the_token_budget(model, monkeypatch):
    images = model.preprocess_image(_images((96, 128), (64, 96)))
    budgets = []
    counts = ForegroundTokenSelector.layer_token_counts

    def recorded(self, focus_token_nums, num_tokens):
        budgets.append(counts(self, focus_token_nums, num_tokens))
        return budgets[-1]

    monkeypatch.setattr(ForegroundTokenSelector, "layer_token_counts", recorded)
    batched = _detections(model, images)[1]
    padded_alone = ImageList(images.tensor[1:2], [images.image_sizes[1]])
    _detections(model, padded_alone)
    assert budgets[1] < budgets[0]  # alone, the smaller image keeps fewer tokens: the batch changes its result
    batch_budget = budgets[0]
    monkeypatch.setattr(ForegroundTokenSelector, "layer_token_counts", lambda self, nums, n: batch_budget)
    _assert_same_detections(_detections(model, padded_alone)[0], batched)


def test_each_images_reported_fine_grained_tokens_are_among_its_own_kept_tokens(model):
    # the fine-grained tokens are picked among the batch-wide k_j kept tokens: a smaller image's held tokens beyond
    # its own budget (not updated for it), which the selection-quality figures and token maps counted as its choices
    with torch.no_grad():
        results = model.forward_inference(_images((96, 128), (64, 96), (48, 64)), return_token_selection=True)
    for result in results:
        selection = result["token_selection"]
        for kept, fine in zip(selection["foreground_inds"], selection["fine_grained_inds"]):
            assert torch.isin(fine, kept).all() and len(fine) > 0


def test_a_batch_of_mixed_sizes_is_warned_of_once(caplog):
    """Called directly, the model cannot group images by size as the predictor does: a mixed batch changes the
    smaller images' detections, so it says so."""
    model = build_tiny_model().eval()
    with caplog.at_level("WARNING", logger="focus_detr"), torch.no_grad():
        model(_images((96, 128), (96, 128)))
        assert "different sizes" not in caplog.text
        model(_images((96, 128), (64, 96)))
        model(_images((96, 128), (48, 64)))
    warnings = [r.getMessage() for r in caplog.records if "different sizes" in r.getMessage()]
    assert len(warnings) == 1 and "(96x128, 64x96)" in warnings[0] and "predict_batch" in warnings[0]


def test_tools_that_batch_mixed_sizes_on_purpose_are_not_warned_of(caplog):
    # the export's and the parity check's padded batches call forward_inference
    model = build_tiny_model().eval()
    with caplog.at_level("WARNING", logger="focus_detr"), torch.no_grad():
        model.forward_inference(_images((96, 128), (64, 96)))
    assert "different sizes" not in caplog.text
