"""Checkpoints record the class names they were trained on (``thing_classes``), and the commands that name the
model's outputs by a dataset's classes refuse one that names them otherwise: the same two classes with swapped ids
load without a shape mismatch and were scored as each other. Fine-tuning on other classes is not refused, and
checkpoints without the entry load as before."""
import shutil

import pytest
import torch

from cli_output import error_lines, logged_warnings
from engine_test_utils import TOY_CONFIG, load_script, train_net  # noqa: F401 (fixtures)
from focus_detr.checkpoint import CheckpointError, read_weights_file
from focus_detr.engine.checkpoint_classes import check_checkpoint_classes, checkpoint_classes

TWO_CLASSES = "model.num_classes=2"
SWAPPED = ("checkpoint {path} and the test set focus_detr_toy_ba name their classes differently: class 0 is 'a' in "
           "the checkpoint and 'b' in focus_detr_toy_ba; the evaluation would score the model's classes as "
           "focus_detr_toy_ba's classes of the same index (give its json the checkpoint's classes, 'a', 'b', with ids "
           "in this order: classes are numbered in the order of their ids)")


@pytest.fixture(scope="module")
def run(train_net, tmp_path_factory):  # noqa: F811 (fixture)
    """Two toy sets of the same objects, classes a and b with ids 1, 2 and swapped; a 2-iteration run on the first."""
    from toy_detector import register_edited_toy_dataset

    def classes(first, second):
        def edit(coco):
            coco["categories"] = [{"id": 1, "name": first}, {"id": 2, "name": second}]
        return edit

    root = tmp_path_factory.mktemp("classes")
    register_edited_toy_dataset("focus_detr_toy_ab", str(root / "ab"), classes("a", "b"))
    register_edited_toy_dataset("focus_detr_toy_ba", str(root / "ba"), classes("b", "a"))
    _cli(train_net, root / "run", "ab", "train.max_iter=2", "train.checkpointer.save_safetensors=True")
    return root / "run"


def _cli(train_net, output, data, *extra, flags=()):  # noqa: F811 (fixture)
    names = f"focus_detr_toy_{data}"
    argv = ["--config-file", TOY_CONFIG, *flags, f"train.output_dir={output}", TWO_CLASSES,
            f"dataloader.train.dataset.names={names}", f"dataloader.test.dataset.names={names}", *extra]
    return train_net.cli(argv)


def test_training_checkpoints_record_the_training_set_classes_as_plain_data(run):
    final = str(run / "model_final.pth")
    assert torch.load(final, map_location="cpu", weights_only=True)["thing_classes"] == ["a", "b"]
    assert read_weights_file(final).content["thing_classes"] == ["a", "b"]  # the safe reader accepts it


def test_eval_only_refuses_a_test_set_that_numbers_classes_otherwise(train_net, run, tmp_path, capsys):  # noqa: F811
    path = run / "model_final.pth"
    assert _cli(train_net, tmp_path, "ba", f"train.init_checkpoint={path}", flags=["--eval-only"]) == 2
    assert error_lines(capsys.readouterr().err) == ["error: " + SWAPPED.format(path=path)]
    assert not (tmp_path / "eval_results.json").exists()
    # the same names in the same order: evaluated, without a word about classes
    with logged_warnings("focus_detr") as warnings:
        assert _cli(train_net, tmp_path, "ab", f"train.init_checkpoint={path}", flags=["--eval-only"]) == 0
    assert not [line for line in warnings if "class" in line], warnings


def test_eval_only_of_the_final_safetensors_weights_checks_the_classes_too(train_net, run, tmp_path,  # noqa: F811
                                                                           capsys):
    # model_final.safetensors recorded no class names, and a test set that numbers them otherwise was scored
    path = run / "model_final.safetensors"
    assert _cli(train_net, tmp_path, "ba", f"train.init_checkpoint={path}", flags=["--eval-only"]) == 2
    assert error_lines(capsys.readouterr().err) == ["error: " + SWAPPED.format(path=path)]
    assert _cli(train_net, tmp_path, "ab", f"train.init_checkpoint={path}", flags=["--eval-only"]) == 0


def test_a_checkpoint_without_class_names_is_evaluated_as_before(train_net, run, tmp_path, capsys):  # noqa: F811
    checkpoint = torch.load(run / "model_final.pth", map_location="cpu", weights_only=True)
    del checkpoint["thing_classes"]
    torch.save(checkpoint, tmp_path / "older.pth")
    with logged_warnings("focus_detr") as warnings:
        code = _cli(train_net, tmp_path / "eval", "ba", f"train.init_checkpoint={tmp_path / 'older.pth'}",
                    flags=["--eval-only"])
    assert code == 0 and not error_lines(capsys.readouterr().err)
    assert not [line for line in warnings if "class" in line], warnings


def test_resume_refuses_a_training_set_that_numbers_classes_otherwise(train_net, run, tmp_path, capsys):  # noqa: F811
    shutil.copytree(run, tmp_path / "run")
    path = tmp_path / "run" / "model_final.pth"
    assert _cli(train_net, tmp_path / "run", "ba", "train.max_iter=4", flags=["--resume"]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(
        f"error: checkpoint {path} and the training set focus_detr_toy_ba name their classes differently: class 0 is "
        "'a' in the checkpoint and 'b' in focus_detr_toy_ba; the resumed training and its evaluations would "
        "take"), errors
    assert errors[0].endswith(f"start a new run from it (train.init_checkpoint={path} in another train.output_dir)")


def test_fine_tuning_on_other_classes_is_not_refused(train_net, run, tmp_path, capsys):  # noqa: F811
    path = run / "model_final.pth"
    assert _cli(train_net, tmp_path, "ba", "train.max_iter=1", f"train.init_checkpoint={path}") == 0
    assert not error_lines(capsys.readouterr().err)
    assert (f"train.init_checkpoint {path} was trained on other classes (class 0 is 'a' there and 'b' here): this run "
            "fine-tunes it on the training set's classes") in (tmp_path / "log.txt").read_text()
    # the new run records its own classes
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["thing_classes"] == ["b", "a"]


def test_the_predictor_names_the_classes_by_the_checkpoint_or_refuses(run):
    from focus_detr.engine import FocusDETRPredictor

    path = str(run / "model_final.pth")

    def predictor(data):
        names = [f"dataloader.{section}.dataset.names=focus_detr_toy_{data}" for section in ("train", "test")]
        return FocusDETRPredictor(TOY_CONFIG, weights=path, device="cpu", overrides=[TWO_CLASSES, *names])

    same = predictor("ab")
    assert same.trained_classes == ["a", "b"] and same.metadata.thing_classes == ["a", "b"]
    with pytest.raises(ValueError) as error:
        predictor("ba").metadata
    assert str(error.value) == SWAPPED.format(path=path).replace(
        "the evaluation would score", "predictor.metadata would name")
    # a config without a test set: the checkpoint names the classes
    bare = FocusDETRPredictor(TOY_CONFIG, weights=path, device="cpu", overrides=[TWO_CLASSES, "dataloader.test=null"])
    assert bare.metadata.thing_classes == ["a", "b"]
    # a test set whose json cannot be read here (as the docs say: the checkpoint's names; it raised the json's error)
    from detectron2.data.datasets import register_coco_instances

    register_coco_instances("focus_detr_toy_gone", {}, str(run / "no_such.json"), str(run))
    gone = FocusDETRPredictor(TOY_CONFIG, weights=path, device="cpu",
                              overrides=[TWO_CLASSES, "dataloader.test.dataset.names=focus_detr_toy_gone"])
    assert gone.metadata.thing_classes == ["a", "b"]


def test_the_demo_refuses_labels_of_other_classes_and_uses_the_checkpoints_without_a_dataset(run):
    from focus_detr.engine import load_config

    demo = load_script("demo/demo.py", "demo_classes")
    path = str(run / "model_final.pth")
    swapped = load_config(TOY_CONFIG, [TWO_CLASSES, "dataloader.train.dataset.names=focus_detr_toy_ba",
                                       "dataloader.test.dataset.names=focus_detr_toy_ba"])
    with pytest.raises(ValueError, match="class 0 is 'a' in the checkpoint and 'b' in focus_detr_toy_ba; the demo "
                                         "would label the model's classes as"):
        demo._class_names(swapped, ["a", "b"], path)
    assert demo._class_names(swapped, None, path) == ["b", "a"]  # a checkpoint without names: the config's
    unreadable = load_config(TOY_CONFIG, [TWO_CLASSES, "dataloader.train.dataset.names=focus_detr_toy_nowhere",
                                          "dataloader.test.dataset.names=focus_detr_toy_nowhere"])
    assert demo._class_names(unreadable, ["a", "b"], path) == ["a", "b"]


def test_a_test_set_naming_the_checkpoints_classes_otherwise_is_refused_whatever_the_training_set(run):
    # the training set's own refusal (ab against the test set's ba) was taken for a dataset that cannot be read, and
    # the demo and the predictor labelled with the checkpoint's names without comparing them, as the export did
    from focus_detr.engine import FocusDETRPredictor, load_config

    demo = load_script("demo/demo.py", "demo_classes")
    path = str(run / "model_final.pth")
    overrides = [TWO_CLASSES, "dataloader.train.dataset.names=focus_detr_toy_ab",
                 "dataloader.test.dataset.names=focus_detr_toy_ba"]
    with pytest.raises(CheckpointError, match="class 0 is 'a' in the checkpoint and 'b' in focus_detr_toy_ba; the "
                                              "demo would label"):
        demo._class_names(load_config(TOY_CONFIG, overrides), ["a", "b"], path)
    predictor = FocusDETRPredictor(TOY_CONFIG, weights=path, device="cpu", overrides=overrides)
    with pytest.raises(CheckpointError, match="class 0 is 'a' in the checkpoint and 'b' in focus_detr_toy_ba; "
                                              "predictor.metadata would name"):
        predictor.metadata
    # the checkpoint's names and the test set's agree: the config's training set is not the model's
    agreeing = FocusDETRPredictor(TOY_CONFIG, weights=path, device="cpu",
                                  overrides=[TWO_CLASSES, "dataloader.train.dataset.names=focus_detr_toy_ba",
                                             "dataloader.test.dataset.names=focus_detr_toy_ab"])
    assert agreeing.metadata.thing_classes == ["a", "b"] and agreeing.metadata.name == "focus_detr_toy_ab"


def test_class_lists_are_compared_index_by_index():
    check_checkpoint_classes(["a", "b"], ["a", "b"], "w.pth", ("the test set", "s"), "use")
    check_checkpoint_classes(None, ["a"], "w.pth", ("the test set", "s"), "use")  # recorded none: not compared
    with pytest.raises(CheckpointError, match="class 2 is 'c' in the checkpoint and missing in s; use as s's"):
        check_checkpoint_classes(["a", "b", "c"], ["a", "b"], "w.pth", ("the test set", "s"), "use")


def test_a_class_entry_that_is_not_a_list_of_names_is_refused():
    assert checkpoint_classes({"iteration": 3}, "w.pth") is None
    assert checkpoint_classes({"thing_classes": ("a",)}, "w.pth") == ["a"]
    with pytest.raises(CheckpointError, match=r"cannot use checkpoint w.pth: its thing_classes entry is a list "
                                              r"\(\['a', 3\]\), not a list of class names"):
        checkpoint_classes({"thing_classes": ["a", 3]}, "w.pth")
