"""Paths shared by the tool tests (see tests/engine/engine_test_utils.py for why this is not a conftest.py)."""
import os
import sys

TOOLS_TESTS = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(TOOLS_TESTS))
TINY_TOY_CONFIG = os.path.join(TOOLS_TESTS, "tiny_focus_detr_toy_config.py")
FIXTURE_CONFIG = os.path.join(REPO_ROOT, "configs", "testing", "focus_detr_tiny_fixture.py")

sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "engine"))  # toy_detector, engine_test_utils
from engine_test_utils import TOY_DATASET, load_script, toy_dataset, toy_subprocess_env  # noqa: E402,F401


def register_two_class_dataset(folder, name, broken_image=False, image_ids=(1, 2)):
    """Registers ``name``: two 60 x 80 grey images in ``folder`` (ids ``image_ids``; the second truncated when
    ``broken_image``), classes "cat" (json id 3) and "dog" (id 7); image 1 has a cat at XYWH (10, 10, 20, 15) and a
    crowd dog at (40, 20, 30, 30), image 2 a dog at (5, 5, 30, 30). Returns the overrides that make the tree config's
    loaders read it."""
    import json

    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from PIL import Image

    from focus_detr.data import register_coco_dataset

    os.makedirs(folder, exist_ok=True)
    images = []
    for index in range(2):
        path = os.path.join(folder, f"im{index}.png")
        Image.fromarray(np.full((60, 80, 3), 90, np.uint8)).save(path)
        images.append({"id": image_ids[index], "file_name": f"im{index}.png", "height": 60, "width": 80})
    if broken_image:
        with open(os.path.join(folder, "im1.png"), "r+b") as f:
            f.truncate(40)
    annotations = [
        {"id": 1, "image_id": image_ids[0], "category_id": 3, "bbox": [10, 10, 20, 15], "area": 300.0, "iscrowd": 0},
        {"id": 2, "image_id": image_ids[0], "category_id": 7, "bbox": [40, 20, 30, 30], "area": 900.0, "iscrowd": 1},
        {"id": 3, "image_id": image_ids[1], "category_id": 7, "bbox": [5, 5, 30, 30], "area": 900.0, "iscrowd": 0},
    ]
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    json_file = os.path.join(folder, "ann.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    register_coco_dataset(name, json_file, folder)
    return [f"dataloader.train.dataset.names={name}", f"dataloader.test.dataset.names={name}"]
