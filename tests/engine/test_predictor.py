"""FocusDETRPredictor: a BGR image in, the detections the model gives for what the test loader makes of that image
out; batches equal to single calls whatever the image sizes; one-line errors for images that are not BGR uint8
(H, W, 3); weights read from a checkpointer's file."""
import os
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from PIL import Image

from focus_detr.engine import AtomicDetectionCheckpointer, FocusDETRPredictor, load_config
from focus_detr.export import match_detections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TREE_CONFIG = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")


@pytest.fixture(scope="module")
def small_tree_cfg():
    """The tree model at a 96-px test size (seconds on a CPU)."""
    cfg = load_config(TREE_CONFIG)
    cfg.dataloader.test.mapper.augmentation[0].short_edge_length = 96
    cfg.dataloader.test.mapper.augmentation[0].max_size = 160
    return cfg


@pytest.fixture(scope="module")
def predictor(small_tree_cfg):
    torch.manual_seed(0)
    return FocusDETRPredictor(small_tree_cfg, device="cpu")


def _image(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_same_detections(reference, candidate, score_tol=1e-5):
    """Every detection of ``reference`` has one in ``candidate`` (same class, IoU >= 0.999, score within tol);
    near-equal scores may be ranked either way."""
    assert len(reference) == len(candidate) > 0
    assert match_detections(reference, candidate, top=len(reference), min_iou=0.999, score_tol=score_tol) == (
        len(reference), len(reference)
    )


def test_import_from_the_package():
    import focus_detr

    assert focus_detr.FocusDETRPredictor is FocusDETRPredictor


def test_equals_the_model_on_what_the_test_loader_makes_of_the_file(predictor, small_tree_cfg, tmp_path):
    image_bgr = _image(45, 70, 0)
    path = str(tmp_path / "image.png")
    cv2.imwrite(path, image_bgr)
    mapper = instantiate(small_tree_cfg.dataloader.test.mapper)  # reads RGB with PIL, resizes to 96 x 149
    item = mapper({"file_name": path, "height": 45, "width": 70, "image_id": 0})
    prepared = predictor.prepare(cv2.imread(path))
    assert torch.equal(prepared["image"], item["image"])  # channel order and resize of the test loader
    assert (prepared["height"], prepared["width"]) == (45, 70)
    with torch.no_grad():
        expected = predictor.model([item])[0]["instances"]
    result = predictor(image_bgr)["instances"]
    assert result.image_size == (45, 70)  # original-image coordinates
    for field in ("scores", "pred_classes"):
        assert torch.equal(result.get(field), expected.get(field))
    assert torch.equal(result.pred_boxes.tensor, expected.pred_boxes.tensor)


def test_batch_equals_single_calls_also_across_sizes(predictor):
    # 48x64 -> 96x128 (two images), 50x64 -> 96x123: a padded batch would change the narrower one
    images = [_image(48, 64, 1), _image(50, 64, 2), _image(48, 64, 3)]
    single = [predictor(image)["instances"] for image in images]
    batched = predictor.predict_batch(images, batch_size=2)
    assert len(batched) == len(images)
    for reference, result in zip(single, batched):
        assert result["instances"].image_size == reference.image_size
        _assert_same_detections(reference, result["instances"])
    # why the batches group by size: padded next to the wider image, the narrower one's scores move
    padded = predictor.run([predictor.prepare(images[1]), predictor.prepare(images[0])])[0]["instances"]
    assert (padded.scores - single[1].scores).abs().max() > 1e-4


@pytest.mark.parametrize(
    "image, words",
    [
        ([np.zeros((8, 8, 3), np.uint8)] * 2, "got a list: for several, call predictor.predict_batch(images)"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), "got Tensor (a tensor? pass its BGR pixels as a (H, W, 3) uint8 "
                                                  "array, e.g. tensor.numpy())"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "e.g. tensor.permute(1, 2, 0).numpy())"),
        ("image.png", "got str (a file? focus_detr.data.read_image(path, 'BGR') reads it)"),
        (Image.new("RGB", (8, 8)), "got Image (a PIL image? np.asarray(image.convert('RGB'))[:, :, ::-1])"),
        (np.zeros((2, 8, 8, 3), np.uint8), "got shape (2, 8, 8, 3) (several images? predictor.predict_batch"),
        (np.zeros((8, 8, 3), np.float32), "got dtype float32"),
        (np.zeros((8, 8), np.uint8), "gray image"),
        (np.zeros((8, 8, 4), np.uint8), "BGRA"),
        (np.zeros((3, 8, 8, 1), np.uint8), "got shape (3, 8, 8, 1)"),
        (np.zeros((0, 8, 3), np.uint8), "is empty"),
        (np.zeros((8, 0, 3), np.uint8), "is empty"),
    ],
    ids=["list", "tensor", "chw-tensor", "path", "pil", "stacked", "float32", "gray", "4-channels", "4-d", "no-rows",
         "no-columns"],
)
def test_images_that_are_not_bgr_uint8_hwc_get_one_line(predictor, image, words):
    with pytest.raises(ValueError) as info:
        predictor(image)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_metadata_is_the_test_sets_for_detectron2_s_visualizer(predictor):
    from detectron2.utils.visualizer import Visualizer

    assert predictor.metadata.thing_classes == ["tree"] and predictor.metadata.name == "trees_val"
    image = _image(96, 128, 0)
    drawn = Visualizer(image[:, :, ::-1], predictor.metadata).draw_instance_predictions(
        predictor(image)["instances"][:3].to("cpu"))
    assert drawn.get_image().shape == (96, 128, 3)


def test_an_image_cv2_could_not_read_says_so(predictor, tmp_path):
    import cv2

    with pytest.raises(ValueError, match=r"^image must be .* got None \(cv2.imread returns None for a file it cannot "
                                         r"read\)$"):
        predictor(cv2.imread(str(tmp_path / "missing.png")))


def test_batch_checks_every_image_before_running_and_names_it(predictor, monkeypatch):
    monkeypatch.setattr(predictor, "run", lambda *args: pytest.fail("ran before checking every image"))
    with pytest.raises(ValueError, match=r"^images\[2\] must be a uint8 numpy array .* got dtype float64$"):
        predictor.predict_batch([_image(8, 8, 0), _image(8, 8, 1), np.zeros((8, 8, 3))])
    with pytest.raises(ValueError, match="takes a list of images"):
        predictor.predict_batch(_image(8, 8, 0))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        predictor.predict_batch([_image(8, 8, 0)], batch_size=0)
    with pytest.raises(ValueError, match="^predict_batch takes a list of images, got NoneType$"):
        predictor.predict_batch(None)


def test_batch_size_may_be_any_integer_type(predictor):
    images = [_image(8, 8, 0), _image(8, 8, 1), _image(8, 8, 2)]
    batched = predictor.predict_batch(images, batch_size=np.int64(2))
    assert [len(result["instances"]) for result in batched] == [len(predictor(image)["instances"]) for image in images]


def test_weights_from_a_checkpointer_file(predictor, small_tree_cfg, tmp_path, caplog):
    AtomicDetectionCheckpointer(predictor.model, str(tmp_path)).save("model_final")
    path = tmp_path / "model_final.pth"
    image = _image(48, 64, 5)
    expected = predictor(image)["instances"]
    torch.manual_seed(1)  # other random weights, replaced by the file's
    for loaded in (
        FocusDETRPredictor(small_tree_cfg, weights=path, device="cpu"),
        # weights=None: the config's train.init_checkpoint (here from the constructor's overrides)
        FocusDETRPredictor(small_tree_cfg, device="cpu", overrides=[f"train.init_checkpoint={path}"]),
    ):
        result = loaded(image)["instances"]
        assert torch.equal(result.scores, expected.scores)
        assert torch.equal(result.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert "randomly initialised" not in caplog.text
    assert small_tree_cfg.train.init_checkpoint == ""  # a loaded config is copied, not changed
    with pytest.raises(FileNotFoundError, match="^checkpoint not found: .*missing.pth$"):
        FocusDETRPredictor(small_tree_cfg, weights=tmp_path / "missing.pth", device="cpu")


def test_a_code_running_weights_file_is_refused_without_running_it(small_tree_cfg, tmp_path):
    sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "checkpoint"))
    from hostile_files import write_malicious

    marker = tmp_path / "marker"
    path = write_malicious(tmp_path / "evil_zip.pth", marker)
    with pytest.raises((OSError, ValueError)) as info:
        FocusDETRPredictor(small_tree_cfg, weights=path, device="cpu")
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_no_weights_warns_once_and_amp_runs_bfloat16(small_tree_cfg, caplog):
    predictor = FocusDETRPredictor(small_tree_cfg, device="cpu", amp=True)
    warnings = [r.getMessage() for r in caplog.records if "randomly initialised" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert predictor.amp_dtype == torch.bfloat16
    assert predictor(_image(48, 64, 6))["instances"].scores.dtype == torch.float32  # heads run in float32
    with pytest.raises(ValueError, match=r"amp must be True, False or None \(the config's\)"):
        FocusDETRPredictor(small_tree_cfg, device="cpu", amp="bf16")


def test_amp_follows_the_configs_inference_amp_unless_given(small_tree_cfg):
    # train.inference_amp.enabled=True ran the predictor in float32 without a word, as the evaluation and the demo
    # did not
    on = ["train.inference_amp.enabled=True"]
    assert FocusDETRPredictor(small_tree_cfg, device="cpu", overrides=on).amp_dtype == torch.bfloat16
    assert FocusDETRPredictor(small_tree_cfg, device="cpu", overrides=on, amp=False).amp_dtype is None
    assert FocusDETRPredictor(small_tree_cfg, device="cpu").amp_dtype is None


def test_cuda_graphs_off_a_gpu_warn_and_run_eagerly(predictor, small_tree_cfg, caplog):
    graphed = FocusDETRPredictor(small_tree_cfg, device="cpu", cuda_graphs=True)
    assert any("cuda_graphs needs a CUDA device" in r.getMessage() for r in caplog.records)
    graphed.model.load_state_dict(predictor.model.state_dict())
    image = _image(48, 64, 6)
    expected, actual = predictor(image)["instances"], graphed(image)["instances"]
    assert torch.equal(expected.scores, actual.scores) and torch.equal(expected.pred_boxes.tensor,
                                                                       actual.pred_boxes.tensor)
    with pytest.raises(ValueError, match="cuda_graphs must be True, False or None"):
        FocusDETRPredictor(small_tree_cfg, device="cpu", cuda_graphs="yes")  # None: the config's


def test_ema_weights_of_a_checkpoint_are_used_when_the_config_says_so(predictor, small_tree_cfg, tmp_path):
    state = predictor.model.state_dict()
    shadow = {name: value + 1 if value.is_floating_point() else value for name, value in state.items()}
    checkpointer = AtomicDetectionCheckpointer(predictor.model, str(tmp_path))
    checkpointer.save("model", trainer={"hooks": {"EMAHook": {"shadow": shadow}}})  # as EMAHook stores it
    weight = "class_embed.0.weight"
    for enabled, expected in (("False", state[weight]), ("True", shadow[weight])):
        loaded = FocusDETRPredictor(small_tree_cfg, weights=tmp_path / "model.pth", device="cpu",
                                    overrides=[f"train.model_ema.enabled={enabled}"])
        assert torch.equal(loaded.model.state_dict()[weight], expected)


def test_a_cuda_device_without_a_gpu_names_the_device_argument(small_tree_cfg, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    with pytest.raises(ValueError) as info:
        FocusDETRPredictor(small_tree_cfg, device="cuda")
    # the user passed device=, not the config's train.device
    assert str(info.value) == "device is 'cuda' but no CUDA GPU is visible; use device='cpu'"
    with pytest.raises(ValueError, match=r"^device 'gpu' is not a torch device"):
        FocusDETRPredictor(small_tree_cfg, device="gpu")


def test_overrides_must_be_a_list_of_key_value_strings(small_tree_cfg):
    # iterated, a string was taken character by character: "config override 't' is not of the form key=value"
    with pytest.raises(ValueError) as info:
        FocusDETRPredictor(TREE_CONFIG, device="cpu", overrides="train.seed=3")
    assert str(info.value) == (
        "overrides must be a list of \"key=value\" strings, got the string 'train.seed=3'; write ['train.seed=3']"
    )
    with pytest.raises(ValueError, match=r"got 3 in it"):
        FocusDETRPredictor(small_tree_cfg, device="cpu", overrides=["train.seed=3", 3])
    with pytest.raises(ValueError) as info:  # "not enough values to unpack (expected 2, got 1)"
        FocusDETRPredictor(small_tree_cfg, device="cpu", overrides=["train.seed"])
    assert str(info.value) == "config override 'train.seed' is not of the form key=value"
    predictor = FocusDETRPredictor(small_tree_cfg, device="cpu", overrides=("train.seed=3",))
    assert predictor.cfg.train.seed == 3


def test_a_test_mapper_written_as_detectron2_s_dataset_mapper_is_followed(predictor, small_tree_cfg):
    # augmentations / image_format (detectron2's DatasetMapper) were not read: the predictor resized to 800 / 1333 in
    # RGB while the test loader gave 352-px BGR images, and found other objects
    import copy

    from detectron2.config import LazyCall as L
    from detectron2.data import DatasetMapper
    from detectron2.data import transforms as T

    from focus_detr.engine.predictor import inference_resize, input_format, model_input

    cfg = copy.deepcopy(small_tree_cfg)
    cfg.dataloader.test.mapper = L(DatasetMapper)(
        is_train=False, image_format="BGR", augmentations=[L(T.ResizeShortestEdge)(short_edge_length=96, max_size=160)])
    assert input_format(cfg) == "BGR"
    image = np.empty((120, 200, 3), dtype=np.uint8)
    image[:] = (10, 20, 30)  # B, G, R
    item = model_input(image, inference_resize(cfg), input_format(cfg))
    assert tuple(item["image"].shape) == (3, 96, 160)  # 96 / 160, not 800 / 1333
    assert item["image"][:, 0, 0].tolist() == [10, 20, 30]  # BGR, as the test loader gives it
    del cfg.dataloader.test.mapper.augmentations
    with pytest.raises(ValueError, match="dataloader.test.mapper has no augmentation or augmentations: the predictor "
                                         "cannot resize images as the test loader does"):
        inference_resize(cfg)
    # detectron2's bare "AssertionError: bogus" traceback
    cfg.dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=96, sample_style="bogus")]
    with pytest.raises(ValueError, match=r"^dataloader.test.mapper.augmentations.0 \(ResizeShortestEdge\) cannot be "
                                         "built: AssertionError: bogus"):
        inference_resize(cfg)


def test_a_config_without_a_test_loader_says_how_images_are_resized(caplog):
    import logging

    from focus_detr.engine import load_config
    from focus_detr.engine.predictor import inference_resize

    cfg = load_config("configs/focus_detr_r18_trees.py")
    del cfg.dataloader  # a model-only config: the trees were trained at 352..512 pixels, not 800 / 1333
    with caplog.at_level(logging.WARNING, logger="focus_detr"):
        resize = inference_resize(cfg)
    assert resize.augs[0].short_edge_length == (800, 800) and resize.augs[0].max_size == 1333
    assert any("no dataloader.test.mapper: images are resized as detectron2's default ResizeShortestEdge(800, 1333)"
               in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("config, words", [
    (None, "got NoneType"), ({"model": {}}, "got dict"), (b"configs/x.py", "got bytes"),
])
def test_a_config_that_is_no_lazyconfig_is_one_line(config, words):
    with pytest.raises(ValueError, match=f"config must be a LazyConfig file path or a config loaded by .* {words}"):
        FocusDETRPredictor(config, device="cpu")


def test_a_loaded_config_without_model_and_weights_of_another_type_are_one_line(small_tree_cfg):
    import copy

    cfg = copy.deepcopy(small_tree_cfg)
    del cfg.model
    with pytest.raises(ValueError, match="the config defines no 'model', which the predictor needs"):
        FocusDETRPredictor(cfg, device="cpu")
    with pytest.raises(ValueError, match=r"weights must be a weights file path or None .* got dict"):
        FocusDETRPredictor(small_tree_cfg, weights={"model": {}}, device="cpu")


def test_model_input_takes_rgb_or_bgr_only():
    from detectron2.data import transforms as T

    from focus_detr.engine.predictor import model_input

    # "rgb", "L" or None silently meant BGR
    with pytest.raises(ValueError, match=r"model_input: fmt must be 'RGB' or 'BGR', got 'rgb'"):
        model_input(_image(20, 30, seed=0), T.AugmentationList([]), "rgb")


def test_build_model_checks_the_device_it_is_given(small_tree_cfg, monkeypatch):
    from focus_detr.engine import build_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # torch said "Found no NVIDIA driver on your system" from deep inside .to()
    with pytest.raises(ValueError, match="device is 'cuda' but no CUDA GPU is visible; use device='cpu'"):
        build_model(small_tree_cfg, "cuda")


def test_a_predictor_whose_model_was_put_in_training_mode_says_so(predictor):
    # the model asked for "batched_inputs[0]['instances']", no hint of why
    predictor.model.train()
    try:
        with pytest.raises(ValueError, match=r"its model is in training mode .* call predictor.model.eval\(\)"):
            predictor(_image(40, 60, seed=1))
    finally:
        predictor.model.eval()
