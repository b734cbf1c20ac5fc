"""tools/visualize_data.py: the ground truth of a config's data drawn on its images, as the dataset holds it and as the
training loader gives it to the model; unreadable images are named and skipped, bad arguments are one line."""
import os

import cv2
import numpy as np
import pytest

from tools_test_utils import REPO_ROOT, load_script, register_two_class_dataset
from cli_output import shows_traceback

from focus_detr.analysis.data_pictures import loader_samples
from focus_detr.analysis.detection_drawing import upscale_factor
from focus_detr.engine import load_config

TREE_CONFIG = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")
RED = (40, 40, 255)  # BGR: ground truth
GREY = (160, 160, 160)  # crowd


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/visualize_data.py", "visualize_data")


def _run(tool, argv):
    return tool.run_reporting_errors(tool.main, tool.parse_args(argv))


def _pictures(tool, argv, output):
    """Runs the tool into ``output``; the pictures written there, sorted."""
    assert _run(tool, [*argv, "--output-dir", str(output)]) == 0
    return sorted(str(output / name) for name in os.listdir(output))


def test_annotation_pictures_show_every_test_image_with_its_boxes(tool, tmp_path, capsys):
    output = tmp_path / "pictures"
    written = _pictures(tool, ["--config-file", TREE_CONFIG, "--source", "annotation", "--split", "test"], output)
    val_images = sorted(os.listdir(os.path.join(REPO_ROOT, "datasets", "trees", "images", "val")))
    assert [os.path.basename(p) for p in written] == [
        os.path.splitext(name)[0] + "_annotations.png" for name in val_images]
    assert capsys.readouterr().out.strip().endswith(f"wrote {len(val_images)} pictures to {output}")
    image = cv2.imread(os.path.join(REPO_ROOT, "datasets", "trees", "images", "val", val_images[0]))
    picture = cv2.imread(written[0])
    factor = upscale_factor(*image.shape[:2])
    assert picture.shape[1] == max(factor * image.shape[1], 420) and picture.shape[0] > factor * image.shape[0]
    assert (picture[: factor * image.shape[0]] == RED).all(axis=2).sum() > 100  # boxes were drawn


def test_annotation_pictures_name_classes_draw_crowd_grey_and_skip_unreadable_images(tool, tmp_path, capfd):
    overrides = register_two_class_dataset(str(tmp_path / "data"), "visualize_two_classes", broken_image=True)
    written = _pictures(tool, ["--config-file", TREE_CONFIG, "--source", "annotation", *overrides], tmp_path / "out")
    assert [os.path.basename(p) for p in written] == ["im0_annotations.png"]
    assert f"skipped {tmp_path / 'data' / 'im1.png'}: cannot read image" in capfd.readouterr().err
    picture = cv2.imread(written[0])
    factor = upscale_factor(60, 80)
    # the "cat" box (10, 10)-(30, 25) in red, the crowd "dog" box (40, 20)-(70, 50) in grey
    assert tuple(picture[round(17 * factor), 10 * factor]) == RED
    assert tuple(picture[round(35 * factor), 70 * factor]) == GREY


def test_loader_pictures_are_the_augmented_network_inputs_with_their_boxes(tool, tmp_path):
    cfg = load_config(TREE_CONFIG, ["dataloader.train.seed=3"])
    samples = list(loader_samples(cfg, 5))
    assert len(samples) == 5
    for sample in samples:
        height, width = sample.image_bgr.shape[:2]
        assert min(height, width) in (288, 320, 352, 384) or max(height, width) == 512  # the training resize
        assert len(sample.boxes) > 0 and (sample.boxes[:, :2] >= 0).all()
        assert (sample.boxes[:, 2] <= width).all() and (sample.boxes[:, 3] <= height).all()
    written = _pictures(tool, ["--config-file", TREE_CONFIG, "--source", "dataloader", "--num", "3"], tmp_path / "out")
    assert len(written) == 3 and all(p.endswith(("_loader1.png", "_loader2.png")) for p in written)


@pytest.mark.parametrize("source", ["annotation", "dataloader"])
def test_the_dataset_json_is_loaded_once(tool, tmp_path, monkeypatch, source):
    # a 30 MB json took 4 s per load, and was loaded three times for --source dataloader
    import detectron2.data.datasets as datasets
    from detectron2.data import MetadataCatalog

    overrides = register_two_class_dataset(str(tmp_path / "data"), f"visualize_loads_{source}")
    loads = []
    real = datasets.load_coco_json
    monkeypatch.setattr(datasets, "load_coco_json", lambda *args, **kwargs: loads.append(args) or real(*args, **kwargs))
    assert MetadataCatalog.get(f"visualize_loads_{source}").get("thing_classes", None) is None  # not loaded yet
    _pictures(tool, ["--config-file", TREE_CONFIG, "--source", source, "--num", "1", *overrides], tmp_path / "out")
    assert len(loads) == 1


@pytest.mark.parametrize("argv, message", [
    (["--source", "dataloader", "--split", "test"], "--source dataloader draws the training loader's output"),
    (["--source", "annotation", "dataloader.test.dataset.names=nope"], "dataset 'nope' is not registered"),
])
def test_bad_arguments_are_one_line(tool, tmp_path, capfd, argv, message):
    status = _run(tool, ["--config-file", TREE_CONFIG, "--output-dir", str(tmp_path / "out"), "--split", "test",
                         *argv])
    err = capfd.readouterr().err
    assert status != 0 and message in err and not shows_traceback(err)


def test_output_into_the_dataset_folder_or_onto_a_file_is_refused(tool, tmp_path, capfd):
    overrides = register_two_class_dataset(str(tmp_path / "data"), "visualize_into_data")
    assert _run(tool, ["--config-file", TREE_CONFIG, "--source", "annotation", "--output-dir",
                       str(tmp_path / "data"), *overrides]) != 0
    assert "holds the dataset's images" in capfd.readouterr().err
    assert sorted(os.listdir(tmp_path / "data")) == ["ann.json", "im0.png", "im1.png"]  # nothing written there
    (tmp_path / "file").write_text("")
    assert _run(tool, ["--config-file", TREE_CONFIG, "--source", "annotation", "--output-dir",
                       str(tmp_path / "file"), *overrides]) != 0
    assert "is a file" in capfd.readouterr().err


def test_no_picture_is_written_into_a_dataset_folder_even_where_other_images_come_first(tool, tmp_path, capfd):
    # the check ran per image: a/pic.png's picture b/pic_annotations.png replaced the dataset's image of that name
    import json

    from PIL import Image

    from focus_detr.data import register_coco_dataset

    images = []
    for index, file_name in enumerate(["a/pic.png", "b/pic_annotations.png"]):
        (tmp_path / file_name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((50, 60, 3), 30 * index, np.uint8)).save(tmp_path / file_name)
        images.append({"id": index + 1, "file_name": file_name, "height": 50, "width": 60})
    coco = {"images": images, "categories": [{"id": 1, "name": "tree"}], "annotations": [
        {"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100.0, "iscrowd": 0}
        for i in (1, 2)]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    register_coco_dataset("visualize_two_folders", str(tmp_path / "ann.json"), str(tmp_path))
    before = (tmp_path / "b" / "pic_annotations.png").read_bytes()
    for source in ("annotation", "dataloader"):
        assert _run(tool, ["--config-file", TREE_CONFIG, "--source", source, "--output-dir", str(tmp_path / "b"),
                           "dataloader.train.dataset.names=visualize_two_folders",
                           "dataloader.test.dataset.names=visualize_two_folders"]) == 2
        assert "holds the dataset's images" in capfd.readouterr().err
    assert (tmp_path / "b" / "pic_annotations.png").read_bytes() == before
    assert sorted(os.listdir(tmp_path / "b")) == ["pic_annotations.png"]


def test_an_image_of_another_size_than_the_dataset_says_is_skipped_not_drawn_wrong(tool, tmp_path, capfd):
    # its boxes are in the dataset's pixels: drawn on this image they were in the wrong place (training refuses it)
    from PIL import Image

    overrides = register_two_class_dataset(str(tmp_path / "data"), "visualize_wrong_size")
    Image.fromarray(np.full((100, 120, 3), 90, np.uint8)).save(tmp_path / "data" / "im1.png")
    written = _pictures(tool, ["--config-file", TREE_CONFIG, "--source", "annotation", *overrides], tmp_path / "out")
    assert [os.path.basename(p) for p in written] == ["im0_annotations.png"]
    assert "is 120x100 pixels (width x height) but the dataset gives width 80 and height 60" in capfd.readouterr().err


def test_a_sideways_photo_whose_stored_size_the_dataset_gives_is_skipped_naming_its_orientation(tool, tmp_path, capfd):
    from PIL import Image

    overrides = register_two_class_dataset(str(tmp_path / "data"), "visualize_sideways")
    exif = Image.Exif()
    exif[0x0112] = 6  # read upright, the stored 80x60 is 60x80
    Image.fromarray(np.full((60, 80, 3), 90, np.uint8)).save(tmp_path / "data" / "im1.png", exif=exif)
    written = _pictures(tool, ["--config-file", TREE_CONFIG, "--source", "annotation", *overrides], tmp_path / "out")
    assert [os.path.basename(p) for p in written] == ["im0_annotations.png"]
    assert ("is 60x80 pixels (width x height) but the dataset gives width 80 and height 60 (swapped: the image file "
            "has EXIF orientation 6, which turns it rotated 90 degrees clockwise when it is read"
            ) in capfd.readouterr().err
