"""check_image_files, run on the test set before training and before an --eval-only inference: an image whose file
cannot be opened is one line naming dataset, json and file, saying truly what it is and what the evaluation would
do with it (stop at a missing file, leave out a folder or a link loop, as open_image decides); so is an image whose
size, read from its header with its EXIF orientation applied, is not the json's."""
import json
import os
import struct
import zlib

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


def _png(path, width, height, exif_after_pixels=None):
    """A PNG of ``width`` x ``height``; with an EXIF chunk of that orientation after its pixels (legal, and where
    PIL finds it only by decoding them) when ``exif_after_pixels`` is given."""
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)
    if exif_after_pixels is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_after_pixels
        data = exif.tobytes()
        chunk = struct.pack(">I", len(data)) + b"eXIf" + data + struct.pack(">I", zlib.crc32(b"eXIf" + data))
        content = path.read_bytes()
        end = content.rindex(b"IEND") - 4  # the IEND chunk's length field
        path.write_bytes(content[:end] + chunk + content[end:])


def _jpeg(path, width, height, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path, exif=exif)


def _register_sizes(tmp_path, sizes):
    """{file name: (width, height) the json gives}, registered as 'image_size_checks'; returns the json."""
    json_file = _register(tmp_path, "image_size_checks", list(sizes))
    coco = json.loads(json_file.read_text())
    for image in coco["images"]:
        image["width"], image["height"] = sizes[image["file_name"]]
    json_file.write_text(json.dumps(coco))
    return json_file


def test_a_test_image_of_another_size_than_its_json_gives_is_named_from_its_header(tmp_path, monkeypatch):
    # found only by the evaluation's mapper, after all of training; the header is read, and the pixels decoded only
    # of the first PNG whose size is swapped (a tag after them would turn it)
    from PIL import ImageFile

    json_file = _register_sizes(tmp_path, {"a.png": (6, 4), "b.png": (4, 6), "c.png": (5, 5), "d.png": (4, 6)})
    for file_name in ("a.png", "b.png", "c.png", "d.png"):
        _png(tmp_path / "images" / file_name, 6, 4)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(os.path.basename(image.filename)))
    with pytest.raises(ValueError) as error:
        check_image_files("image_size_checks", _PURPOSE)
    assert decoded == ["b.png"]
    assert str(error.value) == (
        f"dataset 'image_size_checks' ({json_file}): image {tmp_path / 'images' / 'b.png'} is 6x4 pixels (width x "
        "height) but the dataset gives width 4 and height 6 (the two are swapped) (and up to 2 more of its 4 "
        "images); the "
        f"evaluation at the end of training would stop there: fix the dataset's width/height of this image")


@pytest.mark.parametrize("given, refused", [((40, 20), False), ((20, 40), True)])
def test_an_exif_orientation_is_applied_to_the_header_size_as_the_mapper_applies_it(tmp_path, given, refused):
    # stored 20x40 with orientation 6: read upright as 40x20
    _register_sizes(tmp_path, {"photo.jpg": given})
    _jpeg(tmp_path / "images" / "photo.jpg", 20, 40, orientation=6)
    if not refused:
        check_image_files("image_size_checks", _PURPOSE)
        return
    with pytest.raises(ValueError, match=r"photo\.jpg is 40x20 pixels \(width x height\) but the dataset gives width "
                                         r"20 and height 40 \(swapped: the image file has EXIF orientation 6, "):
        check_image_files("image_size_checks", _PURPOSE)


def test_a_png_whose_exif_tag_follows_its_pixels_is_not_refused_for_its_upright_size(tmp_path):
    _register_sizes(tmp_path, {"late.png": (40, 20)})
    _png(tmp_path / "images" / "late.png", 20, 40, exif_after_pixels=6)
    assert open_image(str(tmp_path / "images" / "late.png")).pixels.shape == (20, 40, 3)  # read upright
    check_image_files("image_size_checks", _PURPOSE)


def test_a_file_pil_cannot_open_is_left_to_the_evaluation_which_names_it(tmp_path):
    _register_sizes(tmp_path, {"text.png": (6, 4)})
    (tmp_path / "images" / "text.png").write_text("not an image")
    check_image_files("image_size_checks", _PURPOSE)  # the evaluation leaves it out with a warning naming why
