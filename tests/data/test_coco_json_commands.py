"""train_net.py with a broken COCO json in its training or test set, in training and in --eval-only: one line
naming the dataset, the json and the entry before any training step or inference (the fields' checks themselves:
test_coco_json_fields.py). Boxes that training drops are warned about and still scored."""
import os
import re
import sys

import pytest

from coco_edits import AREA, BOX, first_annotation, first_bbox

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine"))
from cli_output import error_lines, logged_warnings, shows_traceback  # noqa: E402
from engine_test_utils import TOY_CONFIG, toy_dataset, train_net  # noqa: E402,F401 (fixtures)
from toy_detector import register_edited_toy_dataset  # noqa: E402


def _toy_duplicate_category_id(coco):
    coco["categories"].append({"id": 1, "name": "other"})


def _toy_string_height(coco):
    coco["images"][0]["height"] = "48"


TOY_IMAGE = "image toy_000.png (image_id 1)"
TOY_CASES = {
    "negative_width": (first_bbox([10, 10, -20, 15]), f"annotation id 1 of {TOY_IMAGE} has bbox [10, 10, -20, "
                       f"15]: width and height must be >= 0 (a bbox is [x, y, width, height], not two corners){BOX}"),
    "string_number": (first_bbox([10, 10, "20", 15]), f"annotation id 1 of {TOY_IMAGE} has bbox [10, 10, '20', "
                      f"15]: a bbox is 4 numbers [x, y, width, height], and '20' is a string{BOX}"),
    "no_bbox": (lambda coco: coco["annotations"][0].pop("bbox"), f"annotation id 1 of {TOY_IMAGE} has no 'bbox'; give "
                "each annotation its box [x, y, width, height]"),
    "duplicate_category_id": (_toy_duplicate_category_id, "category id 1 is used by two categories ('box' and "
                              "'other'); category ids must be unique (detectron2 would count two classes, the COCO "
                              "evaluator one)"),
    "string_height": (_toy_string_height, "image id 1 ('toy_000.png') has height '48' (a string): height and width "
                      "must be positive integers, the image's size in pixels"),
}


def _train_net(train_net, capsys, name, mode, out, *extra):
    split = "test" if mode in ("eval", "train_with_bad_test_data") else "train"
    argv = ["--config-file", TOY_CONFIG, *(["--eval-only"] if mode == "eval" else []),
            f"dataloader.{split}.dataset.names={name}", "train.max_iter=2", "train.checkpointer.period=1",
            f"train.output_dir={out}", *extra]
    code = train_net.cli(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(TOY_CASES))
@pytest.mark.parametrize("mode", ["train", "eval", "train_with_bad_test_data"])
def test_train_net_stops_with_one_line_before_any_step_or_inference(train_net, toy_dataset, capsys, tmp_path, case,
                                                                    mode):
    edit, why = TOY_CASES[case]
    name = f"focus_detr_toy_fields_{case}_{mode}"
    json_file = register_edited_toy_dataset(name, str(tmp_path / "data"), edit)
    out = tmp_path / "out"
    # the toy config's train.eval_period is 0: the test data is checked up front all the same (its final evaluation
    # runs anyway)
    code, err = _train_net(train_net, capsys, name, mode, out)
    assert code == 2
    assert error_lines(err) == [f"error: dataset '{name}' ({json_file}): {why}"]
    assert not shows_traceback(err)
    assert not list(out.glob("model_*.pth")) and not (out / "eval_results.json").exists()


@pytest.mark.parametrize("mode", ["train", "eval", "train_with_bad_test_data"])
def test_a_test_set_without_areas_stops_before_any_step_or_inference(train_net, toy_dataset, capsys, tmp_path, mode):
    # COCO evaluation needs them: a KeyError after the whole inference, or at the end of a training run; a training
    # set does without
    name = f"focus_detr_toy_fields_no_area_{mode}"
    json_file = register_edited_toy_dataset(name, str(tmp_path / "data"), lambda coco: coco["annotations"][0].pop("area"))
    out = tmp_path / "out"
    code, err = _train_net(train_net, capsys, name, mode, out)
    if mode == "train":
        assert code == 0 and error_lines(err) == []
        return
    assert code == 2
    errors = error_lines(err)
    assert len(errors) == 1 and re.fullmatch(
        re.escape(f"error: dataset '{name}' ({json_file}): 1 annotation without an 'area', e.g. annotation id 1 of "
                  f"{TOY_IMAGE}, bbox ") + r"\[[^]]*\]" + re.escape(" in a 64 x 48 image, which COCO evaluation needs "
                                                                  f"to score this test set{AREA}"), errors[0]), errors
    assert not list(out.glob("model_*.pth")) and not (out / "eval_results.json").exists()


def test_a_nan_box_in_the_test_data_stops_training_before_the_first_step(train_net, toy_dataset, capsys, tmp_path):
    name = "focus_detr_toy_fields_nan_test_box"
    register_edited_toy_dataset(name, str(tmp_path / "data"), first_bbox([10, float("nan"), 20, 15]))
    out = tmp_path / "out"
    code, err = _train_net(train_net, capsys, name, "train_with_bad_test_data", out)
    assert code == 2
    image = tmp_path / "data" / "images" / "toy_000.png"
    assert error_lines(err) == [
        f"error: dataset '{name}': annotation id 1 of image {image} (image_id 1) has a bbox that is not finite "
        "numbers: [10, nan, 20, 15]; fix or remove it"
    ]
    assert not list(out.glob("model_*.pth")) and not (out / "metrics.json").exists()


def test_eval_only_warns_about_dropped_boxes_and_scores_them(train_net, toy_dataset, capsys, tmp_path):
    name = "focus_detr_toy_fields_zero_width"
    zero_width = first_annotation(bbox=[10, 10, 0, 15], area=0)
    json_file = register_edited_toy_dataset(name, str(tmp_path / "data"), zero_width)
    out = tmp_path / "out"
    with logged_warnings("focus_detr.data.box_warnings") as messages:
        code, err = _train_net(train_net, capsys, name, "eval", out)
    assert code == 0 and (out / "eval_results.json").exists()
    assert [m for m in messages if m.startswith(f"dataset '{name}' ({json_file}): 1 box with no area ")]
    assert len(messages) == 1
