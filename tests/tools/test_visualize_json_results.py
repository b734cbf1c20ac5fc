"""tools/visualize_json_results.py: a COCO results json drawn beside the ground truth of the config's test set, in the
test set's classes; a results file that is not one, or was written for another dataset, is one line."""
import json
import os

import cv2
import numpy as np
import pytest

from tools_test_utils import REPO_ROOT, load_script, register_two_class_dataset
from cli_output import shows_traceback

from focus_detr.analysis.coco_results import read_coco_results
from focus_detr.analysis.detection_drawing import score_colors, upscale_factor

TREE_CONFIG = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")
RED = (40, 40, 255)
DATASET = "visualize_results_two_classes"


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/visualize_json_results.py", "visualize_json_results")


@pytest.fixture
def dataset(tmp_path):
    return register_two_class_dataset(str(tmp_path / "data"), DATASET)


def _results(tmp_path, entries):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(entries))
    return str(path)


def _run(tool, tmp_path, results, overrides, *extra):
    return tool.run_reporting_errors(tool.main, tool.parse_args([
        "--config-file", TREE_CONFIG, "--input", results, "--output-dir", str(tmp_path / "out"), *overrides, *extra]))


def test_detections_are_drawn_in_the_test_sets_classes_beside_the_ground_truth(tool, tmp_path, dataset, capsys):
    results = _results(tmp_path, [
        {"image_id": 1, "category_id": 7, "bbox": [30.0, 5.0, 40.0, 40.0], "score": 0.9},  # a dog: class 1
        {"image_id": 1, "category_id": 3, "bbox": [2.0, 2.0, 10.0, 10.0], "score": 0.1},  # under the threshold
    ])
    assert _run(tool, tmp_path, results, dataset) == 0
    assert capsys.readouterr().out.strip().endswith("wrote 2 pictures to " + str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["im0_results.png", "im1_results.png"]
    picture = cv2.imread(str(tmp_path / "out" / "im0_results.png"))
    factor = upscale_factor(60, 80)
    color = tuple(int(c) for c in score_colors(np.array([0.9]), 0.3)[0])
    assert tuple(picture[25 * factor, 30 * factor]) == color  # the detection's left side, coloured by its score
    assert tuple(picture[4 * factor, 6 * factor]) != color  # the 0.1 box is not drawn
    right = picture[:, picture.shape[1] // 2 + 4:]  # the ground truth beside it
    assert tuple(right[17 * factor, 10 * factor]) == RED


def test_results_for_another_dataset_are_refused_and_unknown_images_counted(tool, tmp_path, dataset, capfd):
    entry = {"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5], "score": 0.5}
    assert _run(tool, tmp_path, _results(tmp_path, [{**entry, "image_id": 99}]), dataset) == 2
    assert "no result of" in capfd.readouterr().err
    assert _run(tool, tmp_path, _results(tmp_path, [entry, {**entry, "image_id": 99}]), dataset) == 0
    assert "warning: 1 of the 2 images in" in capfd.readouterr().err
    # a file without detections drew the ground truth alone, without a word
    assert _run(tool, tmp_path, _results(tmp_path, []), dataset) == 0
    assert "results.json holds no detection: the pictures show the ground truth alone" in capfd.readouterr().err


@pytest.mark.parametrize("content, message", [
    ({"annotations": []}, "holds a JSON dict, not the list of detections"),
    ([{"image_id": 1, "category_id": 7, "bbox": [1, 1, 5], "score": 0.5}], "entry 0 bbox [1, 1, 5] is not 4"),
    ([{"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5], "score": float("nan")}], "score nan is not a finite"),
    ([{"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}], "entry 0 has no score"),
    ([{"image_id": 1.0, "category_id": 7, "bbox": [1, 1, 5, 5], "score": 0.5}], "image_id 1.0 is not an integer or a"),
    ([{"image_id": 1, "category_id": True, "bbox": [1, 1, 5, 5], "score": 0.5}], "category_id True is not an int"),
    ([{"image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5], "score": 0.5}], "category_id 5, which " + DATASET),
    ([{"image_id": 1, "category_id": 7, "bbox": [1, 1, -5, 5], "score": 0.5}], "negative width or height"),
    ([{"image_id": 1, "category_id": 7, "bbox": [1e308, 1, 1e308, 5], "score": 0.5}], "beyond the range of floating"),
    ([{"image_id": 1, "category_id": 7, "bbox": [10**400, 1, 1, 5], "score": 0.5}], "000... is not 4 finite numbers"),
])
def test_a_file_that_is_not_coco_results_is_one_line(tool, tmp_path, dataset, capfd, content, message):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(content))
    assert _run(tool, tmp_path, str(path), dataset) == 2
    err = capfd.readouterr().err
    assert message in err and not shows_traceback(err)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_unreadable_and_missing_results_files_are_one_line(tool, tmp_path, dataset, capfd):
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    assert _run(tool, tmp_path, str(tmp_path / "binary.json"), dataset) == 2
    assert "is not a JSON file" in capfd.readouterr().err
    assert _run(tool, tmp_path, str(tmp_path / "missing.json"), dataset) == 2
    assert "results file not found" in capfd.readouterr().err


def test_reader_groups_per_image_in_xyxy_and_contiguous_classes(tmp_path, dataset):
    from detectron2.data import DatasetCatalog

    DatasetCatalog.get(DATASET)  # loading records the json-id -> class mapping
    path = _results(tmp_path, [
        {"image_id": 2, "category_id": 3, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5},
        {"image_id": 2, "category_id": 7, "bbox": [0.0, 0.0, 1.0, 1.0], "score": 0.25},
    ])
    detections = read_coco_results(path, DATASET)
    assert list(detections) == [2]
    np.testing.assert_array_equal(detections[2].boxes, [[1, 2, 4, 6], [0, 0, 1, 1]])
    np.testing.assert_array_equal(detections[2].scores, [0.5, 0.25])
    np.testing.assert_array_equal(detections[2].classes, [0, 1])


def test_boxes_far_outside_the_image_are_drawn_at_its_edge(tool, tmp_path, dataset, capfd):
    # OpenCV takes 32-bit coordinates: these were tracebacks (cv2.error, OverflowError)
    results = _results(tmp_path, [
        {"image_id": 1, "category_id": 7, "bbox": [1e300, 1e300, 1e300, 1e300], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [10**30, 1, 2, 3], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [20, -1e12, 3e12, 1e12 + 40], "score": 0.9},
    ])
    assert _run(tool, tmp_path, results, dataset) == 0, capfd.readouterr().err
    picture = cv2.imread(str(tmp_path / "out" / "im0_results.png"))
    factor = upscale_factor(60, 80)
    color = tuple(int(c) for c in score_colors(np.array([0.9]), 0.3)[0])
    assert tuple(picture[20 * factor, 20 * factor]) == color  # the third box's left side, from the top down


def test_one_results_file_belongs_to_one_test_set(tool, tmp_path, dataset, capfd):
    # with two test sets, images of both were matched by id alone: one set's detections drawn on the other's images
    results = _results(tmp_path, [{"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5], "score": 0.5}])
    both = [o for o in dataset if not o.startswith("dataloader.test")]
    both.append(f"dataloader.test.dataset.names=[{DATASET},trees_val]")
    assert _run(tool, tmp_path, results, both) == 2
    assert "dataloader.test reads 2 datasets" in capfd.readouterr().err


def test_string_image_ids_as_the_dataset_has_them(tool, tmp_path, capfd):
    # train_net.py --eval-only writes a json's string ids as they are; the tool refused its own evaluation's file
    overrides = register_two_class_dataset(str(tmp_path / "data"), "visualize_string_ids", image_ids=("a", "b"))
    results = _results(tmp_path, [
        {"image_id": "b", "category_id": 7, "bbox": [30.0, 5.0, 40.0, 40.0], "score": 0.9},
        {"image_id": "unknown", "category_id": 7, "bbox": [1.0, 1.0, 4.0, 4.0], "score": 0.9},
        {"image_id": 5, "category_id": 7, "bbox": [1.0, 1.0, 4.0, 4.0], "score": 0.9},
    ])
    assert _run(tool, tmp_path, results, overrides) == 0
    assert "warning: 2 of the 3 images in" in capfd.readouterr().err
    picture = cv2.imread(str(tmp_path / "out" / "im1_results.png"))
    color = tuple(int(c) for c in score_colors(np.array([0.9]), 0.3)[0])
    assert tuple(picture[25 * upscale_factor(60, 80), 30 * upscale_factor(60, 80)]) == color
