"""The documented "Own data" recipe (docs/training.md), literally: its config file (copied from the page next to a copy of configs/)
trains and evaluates through train_net.py on a small 3-class COCO dataset, and loads again in the same process."""
import json
import os
import re
import shutil

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from engine_test_utils import REPO_ROOT, train_net  # noqa: F401 (fixture)

RECIPE_NAMES = ("my_train", "my_val")
# Only sizes and the ImageNet weights (not available here) are overridden: the config file is the documented one.
FAST = [
    "model.transformer.num_queries=20",
    "model.num_detections=20",
    "model.denoising.dn_number=4",
    "train.init_checkpoint=",
    "train.max_iter=1",
    "train.eval_period=1",
    "dataloader.train.total_batch_size=1",
    "dataloader.train.num_workers=0",
    "dataloader.train.mapper.crop_probability=0.0",
    "dataloader.train.mapper.augmentation.1.short_edge_length=[64]",
    "dataloader.train.mapper.augmentation.1.max_size=96",
    "dataloader.test.num_workers=0",
    "dataloader.test.mapper.augmentation.0.short_edge_length=64",
    "dataloader.test.mapper.augmentation.0.max_size=96",
]


def readme_recipe():
    with open(os.path.join(REPO_ROOT, "docs", "training.md")) as f:
        blocks = re.findall(r"^```python\n(.*?)^```", f.read(), re.MULTILINE | re.DOTALL)
    recipes = [block for block in blocks if block.startswith("# configs/my_data.py\n")]
    assert len(recipes) == 1, "docs/training.md's Own data config (a python block starting '# configs/my_data.py') is gone"
    return recipes[0]


def _write_coco(root, split, num_images, rng):
    images, annotations = [], []
    os.makedirs(os.path.join(root, "my", "images"), exist_ok=True)
    for index in range(num_images):
        pixels = rng.randint(0, 60, size=(48, 64, 3)).astype(np.uint8)
        pixels[8:30, 10:40] = 220
        file_name = f"{split}_{index}.png"
        Image.fromarray(pixels).save(os.path.join(root, "my", "images", file_name))
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": 48, "width": 64})
        annotations.append(
            {"id": image_id, "image_id": image_id, "category_id": 1 + index % 3, "bbox": [10, 8, 30, 22],
             "area": 660, "iscrowd": 0}
        )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(("cat", "dog", "bird"))]
    with open(os.path.join(root, "my", f"{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


@pytest.fixture
def recipe_dir(tmp_path, monkeypatch):
    """tmp_path with configs/ (a copy, plus the documented my_data.py) and the recipe's my/ data; the working folder."""
    shutil.copytree(os.path.join(REPO_ROOT, "configs"), tmp_path / "configs")
    (tmp_path / "configs" / "my_data.py").write_text(readme_recipe())
    rng = np.random.RandomState(0)
    _write_coco(str(tmp_path), "train", 3, rng)
    _write_coco(str(tmp_path), "val", 2, rng)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in RECIPE_NAMES:
        for catalog in (DatasetCatalog, MetadataCatalog):
            if name in catalog.list():
                catalog.remove(name)


def test_readme_own_data_config_trains_and_evaluates(train_net, recipe_dir, capsys):
    code = train_net.cli(["--config-file", "configs/my_data.py", *FAST, f"train.output_dir={recipe_dir / 'out'}"])
    assert code == 0, capsys.readouterr().err.strip().splitlines()[-1:]
    assert (recipe_dir / "out" / "model_final.pth").is_file()
    assert "Evaluation results for bbox" in capsys.readouterr().out + (recipe_dir / "out" / "log.txt").read_text()


def test_readme_own_data_config_loads_twice_in_one_process(recipe_dir):
    from focus_detr.engine import load_config

    first = load_config("configs/my_data.py")
    second = load_config("configs/my_data.py")
    assert first.dataloader.train.dataset.names == second.dataloader.train.dataset.names == "my_train"
    assert DatasetCatalog.get("my_val")[0]["file_name"].endswith("val_0.png")


def test_plain_detectron2_registration_at_the_top_of_a_config_works_with_train_net(train_net, recipe_dir, capsys):
    recipe = readme_recipe()
    plain = recipe.replace("from focus_detr.data import register_coco_dataset", "from detectron2.data.datasets import register_coco_instances")
    plain = re.sub(r'register_coco_dataset\("(\w+)", ', r'register_coco_instances("\1", {}, ', plain)
    assert plain != recipe and "register_coco_dataset" not in plain
    (recipe_dir / "configs" / "my_data.py").write_text(plain)
    code = train_net.cli(["--config-file", "configs/my_data.py", "--eval-only", *FAST, f"train.output_dir={recipe_dir / 'out'}"])
    assert code == 0, capsys.readouterr().err.strip().splitlines()[-1:]
    assert (recipe_dir / "out" / "eval_results.json").is_file()
