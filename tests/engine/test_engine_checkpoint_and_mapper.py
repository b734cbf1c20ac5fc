"""Atomic checkpoint writes, RNG capture/restore, the DETR dataset mapper, LR factors and schedules."""
import os
import random

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import transforms as T
from torch import nn

from focus_detr.data.dataset_mapper import DetrDatasetMapper
from focus_detr.engine import AtomicDetectionCheckpointer, LrFactorByName, capture_rng_state, restore_rng_state


def test_checkpoint_write_interrupted_midway_leaves_the_previous_one(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final")
    before = (tmp_path / "model_final.pth").read_bytes()

    def crash(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    with torch.no_grad():
        model.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(ValueError, match="cannot save checkpoint .*model_final.pth: disk full"):
        checkpointer.save("model_final")
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]  # no temporary files left


def test_missing_checkpoint_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*absent.pth"):
        AtomicDetectionCheckpointer(nn.Linear(2, 2)).load(str(tmp_path / "absent.pth"))


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.save(capture_rng_state(), tmp_path / "rng.pth")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def _image_dict(tmp_path, boxes, crowd=()):
    from PIL import Image

    path = tmp_path / "image.png"
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # pure red: tells RGB from BGR
    Image.fromarray(pixels).save(path)
    annotations = [{"bbox": b, "bbox_mode": 1, "category_id": 0, "iscrowd": int(i in crowd)} for i, b in enumerate(boxes)]
    return {"file_name": str(path), "height": 40, "width": 60, "image_id": 1, "annotations": annotations}


def test_mapper_drops_crowd_and_returns_rgb_instances(tmp_path):
    mapper = DetrDatasetMapper([T.ResizeShortestEdge(80, 200)], is_train=True)
    out = mapper(_image_dict(tmp_path, [[0, 0, 10, 10], [5, 5, 20, 20]], crowd=(1,)))
    assert out["image"].shape == (3, 80, 120)
    assert out["image"][0].float().mean() == 255 and out["image"][2].float().mean() == 0
    assert len(out["instances"]) == 1
    assert out["instances"].gt_boxes.tensor.tolist() == [[0.0, 0.0, 20.0, 20.0]]


def test_mapper_at_test_time_has_no_instances(tmp_path):
    out = DetrDatasetMapper([T.ResizeShortestEdge(40, 100)], is_train=False)(_image_dict(tmp_path, [[0, 0, 5, 5]]))
    assert "instances" not in out and "annotations" not in out and out["height"] == 40


def test_mapper_uses_both_pipelines_about_half_of_the_time(tmp_path):
    plain, cropped = [T.ResizeShortestEdge(40, 100)], [T.RandomCrop("absolute", (20, 20))]
    mapper = DetrDatasetMapper(plain, cropped, is_train=True, crop_probability=0.5)
    dataset_dict = _image_dict(tmp_path, [[0, 0, 30, 30]])
    np.random.seed(0)
    shapes = [tuple(mapper(dataset_dict)["image"].shape[-2:]) for _ in range(200)]
    crops = shapes.count((20, 20))
    assert crops + shapes.count((40, 60)) == 200 and 70 < crops < 130


@pytest.mark.parametrize("height, width", [(1, 1), (1, 7), (7, 1)])
def test_mapper_flips_images_one_pixel_wide_or_high(tmp_path, height, width):
    # both flips in a row, as the tree config does: the first left a negative stride the second refused
    from PIL import Image

    path = tmp_path / "thin.png"
    Image.fromarray(np.full((height, width, 3), 200, dtype=np.uint8)).save(path)
    flips = [T.RandomFlip(prob=1.0, horizontal=True, vertical=False),
             T.RandomFlip(prob=1.0, horizontal=False, vertical=True)]
    out = DetrDatasetMapper(flips + [T.ResizeShortestEdge(8, 64)], is_train=False)(
        {"file_name": str(path), "height": height, "width": width}
    )
    assert out["image"].float().mean() == 200


def test_mapper_names_an_unreadable_image(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        DetrDatasetMapper([T.ResizeShortestEdge(40, 100)])({"file_name": str(path), "height": 4, "width": 4})


def test_backbone_lr_factor_and_no_decay_on_norms():
    from detectron2.config import LazyConfig

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4))
            self.head = nn.Linear(4, 2)

    cfg_path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "common", "optim.py")
    optimizer_cfg = LazyConfig.load(cfg_path).AdamW
    optimizer_cfg.params.model = Tiny()
    optimizer = instantiate(optimizer_cfg)
    by_shape = {(tuple(g["params"][0].shape), g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
    assert ((4, 3, 1, 1), 1e-5, 1e-4) in by_shape  # backbone conv: lr x0.1
    assert ((4,), 1e-5, 0.0) in by_shape  # backbone GroupNorm: no decay
    assert ((2, 4), 1e-4, 1e-4) in by_shape  # head
    assert LrFactorByName("backbone", 0.1)("head.weight") == 1.0


@pytest.mark.parametrize("name, decay_iter, total", [("lr_multiplier_12ep", 82500, 90000), ("lr_multiplier_24ep", 150000, 180000), ("lr_multiplier_36ep", 225000, 270000)])
def test_coco_schedules(name, decay_iter, total):
    from detectron2.config import LazyConfig

    cfg_path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "common", "coco_schedule.py")
    scheduler = instantiate(LazyConfig.load(cfg_path, name))
    assert scheduler(0.0) == 1.0
    assert scheduler((decay_iter - 1) / total) == 1.0
    assert scheduler(decay_iter / total) == pytest.approx(0.1)


def test_a_json_report_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import json

    from focus_detr.engine import write_json

    path = tmp_path / "report.json"
    write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    # what a tool holds can fail to encode: the earlier report stays whole, no temporary file is left
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["report.json"]
