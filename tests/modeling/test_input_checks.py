"""The checks of the model's inputs (modeling/input_checks.py, FocusDETR.preprocess_image): what is not detectron2's
model input, pixels of another scale, weights of another precision, ground truth that cannot be trained on. Each is
one line naming the input, where torch would fail deep inside or detect without a word on misread pixels."""
import pytest
import torch

from conftest import build_tiny_model, fixture_inputs


def test_bad_inputs_are_rejected_with_a_clear_error(parity_fixture):
    model = build_tiny_model()
    with pytest.raises(ValueError, match=r"\['image'\] must be a \(3, H, W\) tensor, got \(1, 32, 32\)$"):
        model.eval()([{"image": torch.zeros(1, 32, 32)}])
    model.train()
    item = fixture_inputs(parity_fixture, with_instances=True)[0]
    item["instances"].gt_boxes.tensor[0] = torch.tensor([50.0, 50.0, 10.0, 60.0])
    with pytest.raises(ValueError, match=r"batched_inputs\[0\] has non-finite or inverted \(x2 < x1\) gt boxes"):
        model([item])
    item = fixture_inputs(parity_fixture, with_instances=True)[0]
    item["instances"].gt_classes[0] = 80
    with pytest.raises(ValueError, match=r"batched_inputs\[0\] has gt_classes outside \[0, 80\): \[.*\b80\]"):
        model([item])
    with pytest.raises(ValueError, match=r"training needs batched_inputs\[0\]\['instances'\] \(the model is in"):
        model(fixture_inputs(parity_fixture))


@pytest.mark.parametrize("batched_inputs, message", [
    # each failed deep inside (max() of an empty sequence, 'str' object has no attribute 'get', ...)
    ([], r"batched_inputs must be a non-empty list of dicts, each with an 'image' \(3, H, W\) tensor \(detectron2's "
         r"model input\), got an empty list"),
    ({"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}, "batched_inputs must be a non-empty list .* got dict"),
    (torch.zeros(3, 32, 32, dtype=torch.uint8), "batched_inputs must be a non-empty list .* got Tensor"),
    ((item for item in [{"image": torch.zeros(3, 32, 32)}]), "got generator"),
    ([torch.zeros(3, 32, 32, dtype=torch.uint8)], r"batched_inputs\[0\] must be a dict with an 'image', got Tensor"),
    # 0..65535 pixels were normalised as 0..255 ones: other detections, no word
    ([{"image": torch.zeros(3, 32, 32, dtype=torch.int16)}], r"\['image'\] has dtype torch.int16; pixels are uint8"),
    ([{"image": torch.zeros(3, 32, 32, dtype=torch.bool)}], "has dtype torch.bool"),
    # rescaled to 0 x 0 (or a negative size): no detection left, silently
    ([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8), "height": 0, "width": 40}],
     r"batched_inputs\[0\]\['height'\] must be a positive integer .* got 0"),
    ([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8), "height": 30, "width": 40.5}], r"\['width'\] .* got 40.5"),
])
def test_model_inputs_that_are_not_detectron2_s_are_one_line(tiny_model, batched_inputs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(batched_inputs)


def test_a_whole_float_or_a_tensor_size_is_taken_as_detectron2_takes_it(tiny_model):
    # a COCO json written with "height": 345.0 reaches the model as a float: every image was refused
    image = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    as_ints = tiny_model([{"image": image, "height": 64, "width": 96}])[0]["instances"]
    for height, width in ((64.0, 96.0), (torch.tensor(64), torch.tensor([96]))):
        other = tiny_model([{"image": image, "height": height, "width": width}])[0]["instances"]
        assert other.image_size == (64, 96) and torch.equal(other.pred_boxes.tensor, as_ints.pred_boxes.tensor)
    with pytest.raises(ValueError, match=r"\['height'\] must be a positive integer .* got 64.5"):
        tiny_model([{"image": image, "height": torch.tensor(64.5), "width": 96}])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_weights_cast_to_another_precision_name_autocast(dtype):
    # model.half() / .to(torch.bfloat16) ended in "Input type (torch.FloatTensor) and weight type ... should be the
    # same"; .double() was not told how to undo it
    model = build_tiny_model().eval().to(dtype)
    # model.float() gives float32 weights, but rounded: the detections differ from the original weights'
    with pytest.raises(ValueError, match=rf"^FocusDETR runs with float32 weights, got {dtype}: load the weights "
                                         r"again \(model.float\(\) alone keeps their rounded values\); for bfloat16 "
                                         r"or float16 keep them float32 and autocast"):
        model([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}])


def test_a_model_in_training_mode_called_for_detections_names_eval():
    # instantiate(cfg.model) builds it in training mode, which then asked for ground truth only
    with pytest.raises(ValueError, match=r"^FocusDETR: training needs batched_inputs\[0\]\['instances'\] \(the model "
                                         r"is in training mode: model.eval\(\) for inference\)$"):
        build_tiny_model()([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}])


def test_float_images_in_0_to_255_are_accepted_as_detectron2_allows(tiny_model, parity_fixture):
    item = fixture_inputs(parity_fixture)[0]
    as_uint8 = tiny_model([item])[0]["instances"]
    as_float = tiny_model([dict(item, image=item["image"].float())])[0]["instances"]
    assert torch.equal(as_uint8.scores, as_float.scores)


def test_float_images_in_0_to_1_are_refused_in_one_line(tiny_model, parity_fixture):
    item = fixture_inputs(parity_fixture)[0]
    with pytest.raises(ValueError, match=(
            r"^FocusDETR: batched_inputs\[0\]\['image'\] is a float image whose pixels all lie in 0\.\.1 \(brightest "
            r"0\.917647\); the model takes pixels in 0\.\.255: multiply by 255 \(torchvision's to_tensor scales to "
            r"0\.\.1\), or pass the uint8 image$")):
        tiny_model([dict(item, image=item["image"].float() / 255)])
    for dark in (0.0, 1.0):  # black, and a nearly black 0..255 image: whole values, read the same in either scale
        image = torch.full(item["image"].shape, dark)
        assert len(tiny_model([dict(item, image=image)])[0]["instances"]) > 0


@pytest.mark.parametrize("convert, message", [
    (lambda x: (x / 255 - 0.45) / 0.226, r"looks normalised already \(pixels -0\.95\d*\.\.2\.06\d*\); the model "
                                          r"takes pixels in 0\.\.255 and normalises them itself"),
    (lambda x: x - 128, r"looks centred on 0 \(pixels -68\.\.106\); the model takes pixels in 0\.\.255"),
    (lambda x: x * 257, r"has pixels 15420\.\.60138; the model takes pixels in 0\.\.255: scale the image to 0\.\.255 "
                        r"first \(a 16-bit image: divide by 257\)$"),
    (lambda x: torch.where(x == x.max(), float("nan"), x), r"has pixels that are not finite"),
    (lambda x: torch.where(x == x.max(), float("inf"), x), r"has pixels that are not finite"),
], ids=["normalised", "centred", "16-bit", "nan", "inf"])
def test_float_images_outside_0_to_255_are_refused_in_one_line(tiny_model, parity_fixture, convert, message):
    item = fixture_inputs(parity_fixture)[0]
    with pytest.raises(ValueError, match=r"^FocusDETR: batched_inputs\[0\]\['image'\] " + message):
        tiny_model([dict(item, image=convert(item["image"].float()))])


@pytest.mark.parametrize("darkest, brightest", [
    (-62.0, 317.0),  # a 1-pixel checkerboard resized 1.5x with detectron2's bicubic ResizeTransform on floats
    (-96.0, 382.0),  # detectron2's RandomContrast and RandomBrightness (1.5 each): float images are not clipped
    (-1e-6, 0.0),  # a black frame with rounding noise
    (-0.4, 2.7),  # a dark 0..2 image after a bicubic resize
])
def test_float_images_a_0_to_255_pipeline_gives_are_accepted(tiny_model, parity_fixture, darkest, brightest):
    item = fixture_inputs(parity_fixture)[0]
    image = item["image"].float() * (brightest / 255.0 if brightest < 255 else 1.0)
    image[:, 0, 0], image[:, 0, 1] = darkest, brightest
    assert tiny_model([dict(item, image=image)])[0]["instances"].scores.isfinite().all()
