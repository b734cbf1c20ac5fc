"""Data is checked before it is used, by training and --eval-only alike: non-finite boxes and a class count that
does not fit the data stop with one line before any step or evaluation; batched evaluation warns."""
import json
import os

import pytest

from cli_output import logged_warnings, shows_traceback
from engine_test_utils import TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)
from toy_detector import register_edited_toy_dataset


def _register_with_bad_box(name, root, bad):
    from toy_detector import register_toy_dataset

    register_toy_dataset(name, root, num_images=4)
    json_file = os.path.join(root, "toy.json")
    with open(json_file) as f:
        coco = json.load(f)
    coco["annotations"][2]["bbox"][1] = bad  # annotation id 3 of toy_002.png (image_id 3)
    with open(json_file, "w") as f:
        json.dump(coco, f)


def _run(train_net, capsys, *argv):
    code = train_net.cli(["--config-file", TOY_CONFIG, "dataloader.train.shuffle=False", *argv])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_non_finite_box_stops_training_and_evaluation_with_one_line(train_net, toy_dataset, capsys, tmp_path, bad, mode):
    name = f"focus_detr_toy_bad_box_{mode}"
    _register_with_bad_box(name, str(tmp_path / "data"), bad)
    out = tmp_path / "out"
    split = "train" if mode == "train" else "test"
    argv = [f"dataloader.{split}.dataset.names={name}", "train.max_iter=2", f"train.output_dir={out}"]
    code, err = _run(train_net, capsys, *(["--eval-only"] if mode == "eval" else []), *argv)
    assert code == 2
    assert err[-1].startswith(f"error: dataset '{name}': annotation id 3 of image ")
    assert err[-1].endswith(f"toy_002.png (image_id 3) has a bbox that is not finite numbers: {coco_bbox(tmp_path)}; fix or remove it")
    assert not (out / "eval_results.json").exists() and not (out / "model_final.pth").exists()


def coco_bbox(tmp_path):
    with open(tmp_path / "data" / "toy.json") as f:
        return json.load(f)["annotations"][2]["bbox"]


@pytest.mark.parametrize("eval_only", [False, True])
def test_class_count_that_does_not_fit_the_data_stops_before_training_or_evaluation(
    train_net, toy_dataset, capsys, tmp_path, eval_only
):
    out = tmp_path / "out"
    code, err = _run(
        train_net, capsys, *(["--eval-only"] if eval_only else []), "model.num_classes=5", "train.max_iter=2",
        "train.checkpointer.period=1", f"train.output_dir={out}",
    )
    assert code == 2
    assert err[-1] == "error: model.num_classes is 5 but dataset 'focus_detr_toy' has 1 class (box): set model.num_classes=1"
    assert not list(out.glob("model_*.pth")) and not (out / "eval_results.json").exists()


def test_evaluating_a_checkpoint_with_another_class_count_names_the_class_count(train_net, toy_dataset, capsys,
                                                                                tmp_path):
    # the class count, not "the checkpoint does not fit the model" (which the wrong num_classes also causes)
    trained = tmp_path / "trained"
    assert _run(train_net, capsys, "train.max_iter=2", f"train.output_dir={trained}")[0] == 0
    code, err = _run(train_net, capsys, "--eval-only", "model.num_classes=5", f"train.output_dir={tmp_path / 'eval'}",
                     f"train.init_checkpoint={trained / 'model_final.pth'}")
    assert code == 2
    assert err[-1] == "error: model.num_classes is 5 but dataset 'focus_detr_toy' has 1 class (box): set model.num_classes=1"


@pytest.mark.parametrize("batch_size, warned", [(1, False), (2, True)])
def test_batched_evaluation_warns_that_scores_change(train_net, toy_dataset, capsys, tmp_path, batch_size, warned):
    with logged_warnings("focus_detr.engine.evaluation") as messages:
        code, _ = _run(train_net, capsys, "--eval-only", f"dataloader.test.batch_size={batch_size}", f"train.output_dir={tmp_path}")
    assert code == 0
    batched = [m for m in messages if "dataloader.test.batch_size is 2" in m and "changes their detections" in m]
    assert bool(batched) == warned


def test_cuda_graphs_switched_on_for_a_cpu_evaluation_warn_and_a_bad_value_is_one_line(train_net, toy_dataset,
                                                                                         capsys, tmp_path):
    with logged_warnings("focus_detr.engine.evaluation") as messages:
        code, _ = _run(train_net, capsys, "--eval-only", "train.inference_cuda_graphs.enabled=True",
                       f"train.output_dir={tmp_path}")
    assert code == 0 and (tmp_path / "eval_results.json").exists()
    assert [m for m in messages if "inference_cuda_graphs needs a CUDA device: evaluating eagerly" in m]
    code, err = _run(train_net, capsys, "--eval-only", "train.inference_cuda_graphs.max_graphs=0",
                     "train.inference_cuda_graphs.enabled=True", f"train.output_dir={tmp_path / 'bad'}")
    assert (code, err[-1]) == (2, "error: train.inference_cuda_graphs.max_graphs must be an integer >= 1, got 0")


def _crowd_only(coco):
    for annotation in coco["annotations"]:
        annotation["iscrowd"] = 1


def _unknown_category(coco):
    coco["annotations"][1]["category_id"] = 7


@pytest.mark.parametrize("edit, mode, why", [
    (_crowd_only, "train", "No valid data found in dataset '{name}' ({json}): no image has a box that is not crowd "
                           "(iscrowd 0), and training uses only such images"),
    (_unknown_category, "train", "dataset '{name}' ({json}): annotation id 2 of image_id 2 has category_id 7, which is "
                                 "not among the json's categories (ids 1); add the category or fix the annotation"),
    (_unknown_category, "eval", "dataset '{name}' ({json}): annotation id 2 of image_id 2 has category_id 7, which is "
                                "not among the json's categories (ids 1); add the category or fix the annotation"),
])
def test_unusable_dataset_is_one_line_before_training_or_evaluation(train_net, toy_dataset, capsys, tmp_path, edit,
                                                                    mode, why):
    name = f"focus_detr_toy{edit.__name__}_{mode}"
    json_file = register_edited_toy_dataset(name, str(tmp_path / "data"), edit)
    out = tmp_path / "out"
    split = "train" if mode == "train" else "test"
    argv = [f"dataloader.{split}.dataset.names={name}", "train.max_iter=2", f"train.output_dir={out}"]
    code, err = _run(train_net, capsys, *(["--eval-only"] if mode == "eval" else []), *argv)
    assert code == 2
    assert [line for line in err if line.startswith("error:")] == ["error: " + why.format(name=name, json=json_file)]
    assert not shows_traceback("\n".join(err) + "\n")
    assert not (out / "eval_results.json").exists() and not list(out.glob("model_*.pth"))


def test_eval_only_finds_a_missing_test_image_before_the_inference(train_net, toy_dataset, capsys, tmp_path,
                                                                    monkeypatch):
    from focus_detr.engine import evaluation_run

    name = "focus_detr_toy_missing_eval"
    json_file = register_edited_toy_dataset(name, str(tmp_path / "data"), lambda coco: None)
    missing = tmp_path / "data" / "images" / "toy_001.png"
    missing.unlink()
    # the inference found it only when it reached it, after the images before it, naming neither dataset nor json
    monkeypatch.setattr(evaluation_run, "evaluate", lambda cfg, model: pytest.fail("the inference started"))
    out = tmp_path / "out"
    code, err = _run(train_net, capsys, "--eval-only", f"dataloader.test.dataset.names={name}",
                     f"train.output_dir={out}")
    assert code == 2
    assert err[-1] == (f"error: dataset '{name}' ({json_file}): image file not found: {missing}; the evaluation would "
                       "stop there: fix the dataset's image folder (image_root) or its file names")
    assert not (out / "eval_results.json").exists()


def test_a_test_image_of_another_size_than_its_json_gives_is_found_before_training(train_net, toy_dataset, tmp_path,
                                                                                   capsys):
    # the final evaluation found it, after all of training (its header gives the size: no pixel is decoded)
    json_file = register_edited_toy_dataset("focus_detr_toy_wrong_size_test", str(tmp_path / "data"),
                                            lambda coco: coco["images"][-1].update(height=40))
    out = tmp_path / "out"
    code, err = _run(train_net, capsys, "train.max_iter=3", f"train.output_dir={out}",
                     "dataloader.test.dataset.names=focus_detr_toy_wrong_size_test")
    line = err[-1]
    assert code == 2
    image = tmp_path / "data" / "images" / "toy_002.png"
    assert line == (f"error: dataset 'focus_detr_toy_wrong_size_test' ({json_file}): image {image} is 64x48 pixels "
                    "(width x height) but the dataset gives width 64 and height 40; the evaluation at the end of "
                    "training would stop there: fix the dataset's width/height of this image"), line
    assert not list(out.glob("model_*.pth"))  # refused before the first step
