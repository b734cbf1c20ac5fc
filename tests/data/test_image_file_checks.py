"""check_image_files, run on the test set before training and before an --eval-only inference: an image whose file
cannot be opened is one line naming dataset, json and file, saying truly what it is and what the evaluation would
do with it (stop at a missing file, leave out a folder or a link loop, as open_image decides)."""
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from PIL import Image

from focus_detr.data import UnreadableImageError, check_image_files, open_image

_PURPOSE = "the evaluation at the end of training"
_FIX = "fix the dataset's image folder (image_root) or its file names"


def _register(tmp_path, name, file_names):
    """A COCO json of one 6x4 image per file name under ``tmp_path``/images, registered as ``name``; the files are
    not written."""
    images = [{"id": i + 1, "file_name": f, "height": 4, "width": 6} for i, f in enumerate(file_names)]
    coco = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    json_file = tmp_path / f"{name}.json"
    json_file.write_text(json.dumps(coco))
    (tmp_path / "images").mkdir(exist_ok=True)
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(tmp_path / "images"))
    return json_file


def _image(path):
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(path)


def _folder(path):
    os.mkdir(path)


def _loop(path):
    os.symlink(path.name, path)


def _dangling_link(path):
    os.symlink("gone.png", path)


def _nothing(path):
    pass


@pytest.mark.parametrize("make, why, opened_as", [
    (_nothing, "image file not found: {path}", FileNotFoundError),
    (_dangling_link, "image file not found: {path} (a symbolic link to gone.png, which is not there)",
     FileNotFoundError),
    (_folder, "image {path} is a folder, not an image file", UnreadableImageError),
    (_loop, "image {path} is a symbolic link loop, not an image file", UnreadableImageError),
])
def test_a_test_image_that_cannot_be_opened_is_named_as_what_it_is(tmp_path, make, why, opened_as):
    # a folder or a link loop was "image file not found", and "would stop there" where the evaluation leaves it out
    json_file = _register(tmp_path, "image_file_checks", ["ok.png", "bad.png"])
    _image(tmp_path / "images" / "ok.png")
    path = tmp_path / "images" / "bad.png"
    make(path)
    with pytest.raises(ValueError) as error:
        check_image_files(["image_file_checks"], _PURPOSE)
    consequence = ("would stop there" if opened_as is FileNotFoundError
                   else "would leave it out, its objects counted as missed")
    assert str(error.value) == (f"dataset 'image_file_checks' ({json_file}): {why.format(path=path)}; {_PURPOSE} "
                                f"{consequence}: {_FIX}")
    # what the evaluation's reader does with it, which the line says
    with pytest.raises(opened_as):
        open_image(str(path))


def test_image_files_that_are_there_pass_and_the_others_are_counted(tmp_path):
    _register(tmp_path, "image_file_checks", ["a.png", "link.png", "b.png", "c.png"])
    _image(tmp_path / "images" / "a.png")
    os.symlink("a.png", tmp_path / "images" / "link.png")  # a link to an image is an image
    _image(tmp_path / "images" / "b.png")
    _image(tmp_path / "images" / "c.png")
    check_image_files("image_file_checks", _PURPOSE)
    os.remove(tmp_path / "images" / "b.png")
    _folder(tmp_path / "images" / "b.png")
    os.remove(tmp_path / "images" / "c.png")
    with pytest.raises(ValueError, match=r": image .*b\.png is a folder, not an image file \(and 1 more of its 4 "
                                         r"images\); the evaluation at the end of training would leave it out"):
        check_image_files("image_file_checks", _PURPOSE)
