"""A COCO json whose ids or file names do not mean one thing each stops training and --eval-only with one line naming
the json and the id, before any step or inference: pycocotools would otherwise merge, drop or double images and
annotations and score another dataset than the json describes (duplicate image ids changed AP 0.075 to 0.130)."""
import json

import pytest
import torch
from detectron2.structures import Boxes, Instances

from cli_output import error_lines, shows_traceback
from engine_test_utils import TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)
from toy_detector import register_edited_toy_dataset


def _duplicate_image_id(coco):
    # the case: toy_001.png takes toy_000.png's id, and its annotation follows
    coco["images"][1]["id"] = coco["annotations"][1]["image_id"] = 1


def _duplicate_annotation_id(coco):
    coco["annotations"][2]["id"] = 2


def _annotation_of_no_image(coco):
    coco["annotations"][2]["image_id"] = 42


def _one_file_twice(coco):
    coco["images"][2]["file_name"] = "toy_000.png"


WHY = {
    _duplicate_image_id: "image id 1 is used by two images ('toy_000.png' and 'toy_001.png'); image ids must be "
                         "unique, or their annotations are scored against one of them",
    _duplicate_annotation_id: "annotation id 2 is used by two annotations; annotation ids must be unique",
    _annotation_of_no_image: "annotation id 3 has image_id 42, which no image has; fix the image_id or remove the "
                             "annotation",
    _one_file_twice: "images 1 and 3 both name the file 'toy_000.png'; list each image once (twice, it is trained on "
                     "and scored twice)",
}


def _run(train_net, capsys, *argv):
    code = train_net.cli(["--config-file", TOY_CONFIG, *argv])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("edit", list(WHY), ids=lambda edit: edit.__name__.strip("_"))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_inconsistent_coco_json_is_one_line_naming_file_and_id(train_net, toy_dataset, capsys, tmp_path, edit, mode):
    name = f"focus_detr_toy{edit.__name__}_{mode}"
    json_file = register_edited_toy_dataset(name, str(tmp_path / "data"), edit)
    out = tmp_path / "out"
    split = "test" if mode == "eval" else "train"
    code, err = _run(
        train_net, capsys, *(["--eval-only"] if mode == "eval" else []), f"dataloader.{split}.dataset.names={name}",
        "train.max_iter=2", "train.checkpointer.period=1", f"train.output_dir={out}",
    )
    assert code == 2
    assert error_lines(err) == [f"error: dataset '{name}' ({json_file}): {WHY[edit]}"]
    assert not shows_traceback(err)
    assert not (out / "eval_results.json").exists() and not list(out.glob("model_*.pth"))


def test_an_inconsistent_test_json_stops_training_before_the_first_step(train_net, toy_dataset, capsys, tmp_path):
    """The test data is read only at the first evaluation; its json is checked before training starts."""
    name = "focus_detr_toy_bad_test_json"
    json_file = register_edited_toy_dataset(name, str(tmp_path / "data"), _duplicate_image_id)
    out = tmp_path / "out"
    code, err = _run(
        train_net, capsys, f"dataloader.test.dataset.names={name}", "train.max_iter=2", "train.eval_period=2",
        "train.checkpointer.period=1", f"train.output_dir={out}",
    )
    assert code == 2
    assert error_lines(err) == [f"error: dataset '{name}' ({json_file}): {WHY[_duplicate_image_id]}"]
    assert not list(out.glob("model_*.pth")) and not (out / "metrics.json").exists()


def _no_annotations(coco):
    coco["annotations"] = []


def test_a_test_set_without_ground_truth_is_evaluated_with_a_warning(train_net, toy_dataset, capsys, tmp_path):
    name = "focus_detr_toy_no_annotations"
    register_edited_toy_dataset(name, str(tmp_path / "data"), _no_annotations)
    code, err = _run(train_net, capsys, "--eval-only", f"dataloader.test.dataset.names={name}",
                   f"train.output_dir={tmp_path / 'out'}")
    assert code in (0, None), err
    log = (tmp_path / "out" / "log.txt").read_text()
    assert f"Every COCO metric is NaN: the test set ['{name}'] has no ground-truth boxes" in log


def test_a_model_that_detects_nothing_scores_zero_not_nan(train_net, toy_dataset, capsys, tmp_path, monkeypatch):
    import toy_detector

    def no_detections(self, batched_inputs, logits, boxes):
        return [{"instances": Instances((item["height"], item["width"]), pred_boxes=Boxes(torch.zeros(0, 4)),
                                        scores=torch.zeros(0), pred_classes=torch.zeros(0, dtype=torch.int64))}
                for item in batched_inputs]

    monkeypatch.setattr(toy_detector.ToyDetector, "inference", no_detections)
    code, err = _run(train_net, capsys, "--eval-only", f"train.output_dir={tmp_path / 'out'}")
    assert code in (0, None), err
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "The model detected nothing on the test set ['focus_detr_toy']: its COCO metrics are 0" in log
    assert "Every COCO metric is NaN" not in log
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["bbox"]["AP"] == 0.0 and results["bbox"]["AP50"] == 0.0
