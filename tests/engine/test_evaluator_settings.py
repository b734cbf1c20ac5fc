"""Evaluator settings that cannot work are refused in one line before any work (they used to fail after the
inference, in training after the iterations since the last checkpoint, with a traceback), a list of evaluators runs
as detectron2 runs it, and ``--eval-only`` without an evaluator is refused rather than writing empty results."""
import json

import pytest

from cli_output import error_lines
from engine_test_utils import TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)


def _config_with_evaluators(folder, evaluators):
    """A config file in ``folder``: the toy config with ``dataloader.evaluator`` set to the Python text
    ``evaluators``."""
    path = folder / "evaluators_config.py"
    path.write_text(
        "from detectron2.config import LazyCall as L, LazyConfig\n"
        "from detectron2.evaluation import COCOEvaluator\n"
        f"_toy = LazyConfig.load({TOY_CONFIG!r})\n"
        "dataloader, model, optimizer, train, lr_multiplier = (_toy.dataloader, _toy.model, _toy.optimizer, "
        "_toy.train, _toy.lr_multiplier)\n"
        f"dataloader.evaluator = {evaluators}\n"
    )
    return str(path)


_COCO = 'L(COCOEvaluator)(dataset_name="focus_detr_toy")'


@pytest.mark.parametrize("override, message", [
    # a string is a list of letters to COCOEvaluator: "AssertionError: Got unknown task: b!" after the inference
    ("dataloader.evaluator.tasks=bbox", "dataloader.evaluator.tasks must be a list of tasks, got 'bbox' "
     "(COCOEvaluator would read a string letter by letter): set dataloader.evaluator.tasks=[bbox] (or leave it out)"),
    # pycocotools' "KeyError: 'id'" after the inference
    ("dataloader.evaluator.tasks=[segm]", "dataloader.evaluator.tasks has segm, which needs masks, which Focus-DETR "
     "does not predict (it predicts boxes): set dataloader.evaluator.tasks=[bbox] (or leave it out)"),
    ("dataloader.evaluator.tasks=[box]", "dataloader.evaluator.tasks has 'box', not one of COCOEvaluator's tasks "
     "(bbox, segm, keypoints)"),
    ("dataloader.evaluator.tasks=[]", "dataloader.evaluator.tasks is empty, which scores nothing"),
])
def test_evaluator_settings_that_cannot_work_are_refused_before_training(train_net, toy_dataset, tmp_path, capsys,
                                                                         override, message):
    out = tmp_path / "out"
    code = train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={out}", "train.max_iter=2",
                          "train.eval_period=1", override])
    assert code == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), errors
    assert not list(out.glob("*"))  # refused before the set-up wrote its config and log


def test_two_coco_evaluators_are_refused_before_training(train_net, toy_dataset, tmp_path, capsys):
    # detectron2's DatasetEvaluators asserted "Different evaluators produce results with the same key bbox" after
    # the inference
    config = _config_with_evaluators(tmp_path, f"[{_COCO}, {_COCO}]")
    assert train_net.cli(["--config-file", config, f"train.output_dir={tmp_path / 'out'}", "train.max_iter=2"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: dataloader.evaluator[0] and dataloader.evaluator[1] are both COCOEvaluators: detectron2 refuses two "
        "results named 'bbox' (after the inference); keep one, and evaluate other settings with a command each"]


def test_an_empty_list_of_evaluators_is_refused_before_training(train_net, toy_dataset, tmp_path, capsys):
    config = _config_with_evaluators(tmp_path, "[]")
    assert train_net.cli(["--config-file", config, f"train.output_dir={tmp_path / 'out'}", "train.max_iter=2"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: dataloader.evaluator is an empty list, which evaluates nothing: give it an evaluator (e.g. the "
        "configs' COCOEvaluator), or set dataloader.evaluator=null to train without evaluation"]


def test_a_list_of_evaluators_is_evaluated_as_detectron2_does(train_net, toy_dataset, tmp_path):
    # (omegaconf's "ListConfig does not support attribute access" in training, "ListConfig indices must be
    # integers" in an evaluation)
    config = _config_with_evaluators(tmp_path, f"[{_COCO}]")
    out = tmp_path / "out"
    assert train_net.cli(["--config-file", config, f"train.output_dir={out}", "train.max_iter=2"]) == 0
    assert train_net.cli(["--config-file", config, "--eval-only", f"train.output_dir={out}",
                          f"train.init_checkpoint={out / 'model_final.pth'}"]) == 0
    with open(out / "eval_results.json") as f:
        assert "AP" in json.load(f)["bbox"]


def test_an_evaluation_without_an_evaluator_is_refused(train_net, toy_dataset, tmp_path, capsys):
    # it loaded the model, scored nothing, wrote {} as eval_results.json and exited 0
    code = train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path}",
                          "dataloader.evaluator=null"])
    assert code == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: --eval-only needs dataloader.evaluator, and the config has none: nothing would score the detections; "
        "leave out the override dataloader.evaluator=null (or give the config an evaluator)"]
    assert not (tmp_path / "eval_results.json").exists()
