"""The mapper refuses an image whose size is not the dataset's (its boxes would land elsewhere) with one line that
says which number is which, and names the file's EXIF orientation when that swapped the sides; an orientation tag the
dataset's size cannot vouch for is named once in a warning."""
import logging

import numpy as np
import pytest
from PIL import Image

from focus_detr.data.dataset_mapper import DetrDatasetMapper, check_image_size


def _jpeg(path, width, height, orientation=None):
    image = Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation  # the EXIF Orientation tag; 6: the stored picture is turned 90 degrees
    image.save(path, exif=exif)
    return str(path)


def test_a_photo_stored_sideways_names_its_exif_orientation(tmp_path):
    path = _jpeg(tmp_path / "sideways.jpg", width=40, height=20, orientation=6)
    mapper = DetrDatasetMapper(augmentation=[], is_train=False)
    with pytest.raises(ValueError) as info:
        mapper({"file_name": path, "width": 40, "height": 20, "image_id": 0})  # the stored size, as many tools write
    assert str(info.value) == (
        f"image {path} is 20x40 pixels (width x height) but the dataset gives width 40 and height 20 (swapped: the "
        "image file has EXIF orientation 6, which turns it rotated 90 degrees clockwise when it is read, as "
        "detectron2 reads it; give the size of the upright image): fix the dataset's width/height of this image"
    )
    assert mapper({"file_name": path, "width": 20, "height": 40, "image_id": 0})["image"].shape == (3, 40, 20)


@pytest.mark.parametrize("suffix, orientation", [(".png", None), (".jpg", 1), (".jpg", 3)])
def test_a_swapped_size_without_a_tag_that_swaps_the_sides_names_no_exif_tag(tmp_path, suffix, orientation):
    # "the image file probably has an EXIF orientation tag" was said of a PNG without any
    path = tmp_path / f"image{suffix}"
    if suffix == ".png":
        Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8)).save(path)
    else:
        _jpeg(path, width=40, height=20, orientation=orientation)
    mapper = DetrDatasetMapper(augmentation=[], is_train=False)
    with pytest.raises(ValueError) as info:
        mapper({"file_name": str(path), "width": 20, "height": 40, "image_id": 0})
    assert str(info.value) == (f"image {path} is 40x20 pixels (width x height) but the dataset gives width 20 and "
                               "height 40 (the two are swapped): fix the dataset's width/height of this image")


@pytest.mark.parametrize("orientation, width, height, size_given, named", [
    (3, 40, 20, True, True),  # 180 degrees keeps the size: nothing can tell
    (2, 40, 20, True, True),
    (6, 20, 40, True, False),  # the dataset gives the upright size: its boxes are on the upright image
    (6, 30, 30, True, True),  # square: the size tells nothing
    (6, 20, 40, False, True),  # no size in the dataset
    (1, 40, 20, True, False),
    (None, 40, 20, True, False),
])
def test_an_orientation_tag_the_dataset_cannot_vouch_for_is_named_once(tmp_path, caplog, orientation, width, height,
                                                                          size_given, named):
    stored = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    path = _jpeg(tmp_path / "photo.jpg", *stored, orientation=orientation)
    mapper = DetrDatasetMapper(augmentation=[], is_train=False)
    record = {"file_name": path, "image_id": 1, **({"width": width, "height": height} if size_given else {})}
    with caplog.at_level(logging.WARNING, logger="focus_detr.data.dataset_mapper"):
        for _ in range(3):
            assert mapper(dict(record))["image"].shape == (3, height, width)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if not named:
        assert warnings == []
        return
    turned = {2: "mirrored", 3: "rotated 180 degrees", 6: "rotated 90 degrees clockwise"}[orientation]
    assert warnings == [
        f"image {path} has EXIF orientation {orientation}: it is read {turned} from its stored pixels, as detectron2 "
        "reads it, so its boxes must have been drawn on the upright image (tools/visualize_data.py shows them); other "
        "images with an orientation tag are not named"
    ]


def test_another_size_is_named_and_a_missing_size_is_filled_in():
    image = np.zeros((30, 50, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"^image a.png is 50x30 pixels \(width x height\) but the dataset gives width "
                                         r"50 and height 31: fix"):
        check_image_size({"file_name": "a.png", "width": 50, "height": 31}, image)
    record = {"file_name": "a.png", "width": 50}
    check_image_size(record, image)
    assert (record["height"], record["width"]) == (30, 50)


def test_an_image_the_resize_makes_0_pixels_wide_is_named(tmp_path):
    # PIL's bare "height and width must be > 0" stopped training, naming no file
    from detectron2.data import transforms as T

    path = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 3000, 3), dtype=np.uint8)).save(path)
    mapper = DetrDatasetMapper(augmentation=[T.ResizeShortestEdge(800, 1333)], is_train=False)
    with pytest.raises(ValueError) as info:
        mapper({"file_name": str(path), "width": 3000, "height": 1, "image_id": 0})
    assert str(info.value) == (
        f"image {path} (1x3000 pixels) cannot be resized by the mapper's augmentation: height and width must be > 0 "
        "(a side resized to 0 pixels: the image is too elongated, or a size of the mapper's augmentation is 0); remove "
        "it from the dataset, or fix the size"
    )
