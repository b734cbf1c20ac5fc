"""The mapper refuses an image whose size is not the dataset's (its boxes would land elsewhere) with one line that
says which number is which, and names EXIF orientation when the sides are swapped."""
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
        "image file probably has an EXIF orientation tag, which is applied when it is read; give the size of the "
        "upright image): fix the dataset's width/height of this image"
    )
    assert mapper({"file_name": path, "width": 20, "height": 40, "image_id": 0})["image"].shape == (3, 40, 20)


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
