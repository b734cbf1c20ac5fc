"""The class names an export writes into model.json: the test set's, refused when the checkpoint records them
otherwise (before the trace), the checkpoint's where the dataset cannot be read, none of another count than the
model's; and --evaluate scores no test set naming them otherwise than the training set."""
import json

import pytest
import torch

from conftest import TINY_CONFIG

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export_test_utils import copy_graph, noise_png  # noqa: E402 (first: it puts tests/tools on the path)
from tools_test_utils import load_script  # noqa: E402

TREE_CONFIG = TINY_CONFIG.parents[1] / "focus_detr_r18_trees.py"


def _json_classes(cfg, num_classes, trained=None):
    """What the export writes into model.json for ``cfg``'s model of ``num_classes`` classes, whose checkpoint
    w.pth records ``trained``: (class names, category ids, why there are none)."""
    from focus_detr.engine.checkpoint_classes import model_classes
    from focus_detr.export import model_json_classes

    classes = model_classes(cfg, trained, "w.pth", "model.json would name the model's classes")
    return model_json_classes(cfg, classes, num_classes)


def test_the_export_writes_no_class_names_of_another_count_than_the_model_s():
    # the tree set's one name beside model.num_classes=2: the predictor then refused the graph it had just written
    from focus_detr.engine import load_config

    cfg = load_config(str(TREE_CONFIG))
    assert _json_classes(cfg, 1) == (["tree"], [1], None)  # the json's category id (it was None: not loaded)
    assert _json_classes(cfg, 2) == (None, None, "the test set has 1 classes, the model 2 (model.num_classes)")


def test_the_export_refuses_class_names_the_checkpoint_orders_otherwise_and_else_takes_its_names():
    # a checkpoint records its training classes: model.json named a renumbered test set's classes without a word
    from focus_detr.engine import load_config

    cfg = load_config(str(TREE_CONFIG))
    assert _json_classes(cfg, 1, ["tree"]) == (["tree"], [1], None)
    with pytest.raises(ValueError, match=r"^checkpoint w.pth and the test set trees_val name their classes "
                                         r"differently: class 0 is 'shrub' in the checkpoint and 'tree' in trees_val; "
                                         r"model.json would name the model's classes as trees_val's classes"):
        _json_classes(cfg, 1, ["shrub"])
    # a test set that cannot be read: the checkpoint's names, and no reason to warn
    unreadable = load_config(str(TREE_CONFIG), ["dataloader.test.dataset.names=focus_detr_nowhere",
                                                "dataloader.train.dataset.names=focus_detr_nowhere"])
    assert _json_classes(unreadable, 1, ["shrub"]) == (["shrub"], None, None)


def test_the_export_refuses_a_checkpoint_of_other_class_names_before_it_traces(export_tool, tmp_path, monkeypatch,
                                                                              capfd):
    # refused only after the trace (minutes for an R50) unless --evaluate was given
    from focus_detr.engine import load_config
    from focus_detr.engine.runner import build_model

    checkpoint = tmp_path / "shrub.pth"
    torch.save({"model": build_model(load_config(str(TREE_CONFIG)), "cpu").state_dict(), "thing_classes": ["shrub"]},
               checkpoint)

    def traced(*args):
        raise AssertionError("the graph was traced")

    monkeypatch.setattr(export_tool, "export_onnx", traced)
    argv = ["--config-file", str(TREE_CONFIG), "--output", str(tmp_path / "onnx"), "--sample-size", "64", "64",
            f"train.init_checkpoint={checkpoint}"]
    assert export_tool.run_reporting_errors(export_tool.cli, export_tool.parse_args(argv)) == 2
    assert ("name their classes differently: class 0 is 'shrub' in the checkpoint and 'tree' in trees_val; model.json "
            "would name the model's classes") in capfd.readouterr().err


class _Traced(Exception):
    """Raised in place of the trace: the export got that far."""


def _stop_at_the_trace(*args):
    raise _Traced


def test_the_export_names_the_classes_by_the_checkpoint_where_the_dataset_cannot_be_read(export_tool, tmp_path,
                                                                                        monkeypatch):
    # a checkpoint that records its classes stopped the export with the test set's read error (before the trace),
    # where model.json was to take the checkpoint's names
    from focus_detr.engine import load_config
    from focus_detr.engine.runner import build_model

    checkpoint = tmp_path / "tree.pth"
    torch.save({"model": build_model(load_config(str(TREE_CONFIG)), "cpu").state_dict(), "thing_classes": ["tree"]},
               checkpoint)
    monkeypatch.setattr(export_tool, "export_onnx", _stop_at_the_trace)
    argv = ["--config-file", str(TREE_CONFIG), "--output", str(tmp_path / "onnx"), "--sample-size", "64", "64",
            f"train.init_checkpoint={checkpoint}", "dataloader.train.dataset.names=focus_detr_nowhere",
            "dataloader.test.dataset.names=focus_detr_nowhere"]
    with pytest.raises(_Traced):
        export_tool.main(export_tool.parse_args(argv))


def test_the_export_evaluates_no_test_set_naming_the_classes_otherwise_than_the_training_set(export_tool, tmp_path,
                                                                                            monkeypatch):
    # --eval-only refuses it; --evaluate exported the graph, then scored the model's classes as the test set's
    from detectron2.data.datasets import register_coco_instances

    json_file = tmp_path / "shrubs.json"
    json_file.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "shrub"}]}))
    register_coco_instances("focus_detr_export_shrubs", {}, str(json_file), str(tmp_path))
    monkeypatch.setattr(export_tool, "export_onnx", _stop_at_the_trace)
    argv = ["--config-file", str(TREE_CONFIG), "--output", str(tmp_path / "onnx"), "--sample-size", "64", "64",
            "--evaluate", "dataloader.train.dataset.names=focus_detr_export_shrubs"]
    with pytest.raises(ValueError, match="^the training set focus_detr_export_shrubs and the test set trees_val name "
                                         "their classes differently: class 0 is 'shrub'"):
        export_tool.main(export_tool.parse_args(argv))


def _renamed_tree_graph(tiny_export, folder, class_names):
    """The tiny graph, its model.json saying it was exported from the tree config for ``class_names``."""
    return copy_graph(tiny_export, folder, {"num_classes": 1, "class_names": class_names, "category_ids": None,
                                            "resize": {"short_edge": 352, "max_size": 512, "interpolation": 2}})


def _graph_refusal(graph, use):
    return (f"graph {graph} and the test set trees_val name their classes differently: class 0 is 'shrub' in the "
            f"graph and 'tree' in trees_val; {use} as trees_val's classes of the same index (give its json the "
            "graph's classes, 'shrub', with ids in this order: classes are numbered in the order of their ids)")


def test_the_demo_refuses_a_graph_exported_for_other_class_names_and_else_takes_them(tiny_export, tmp_path, capfd):
    # only the class count was compared: a graph of the same count of other (or reordered) classes was labelled
    # with the test set's names
    from cli_output import shows_traceback
    from focus_detr.engine import load_config

    demo = load_script("demo/demo.py", "demo")
    shrub = _renamed_tree_graph(tiny_export, tmp_path / "shrub", ["shrub"])
    argv = ["--config-file", str(TREE_CONFIG), "--input", noise_png(tmp_path / "noise.png"), "--output",
            str(tmp_path / "out"), "--onnx", shrub]
    assert demo.run_reporting_errors(demo.main, demo.parse_args(argv)) == 2
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: " + _graph_refusal(shrub, "the demo would label the model's classes")]
    assert not shows_traceback(err) and not (tmp_path / "out").exists()
    # the test set's names, the graph's where the config's dataset cannot be read, none where neither names them
    cfg = load_config(str(TREE_CONFIG))
    unreadable = load_config(str(TREE_CONFIG), ["dataloader.test.dataset.names=focus_detr_nowhere",
                                                "dataloader.train.dataset.names=focus_detr_nowhere"])
    assert demo._class_names(cfg, ["tree"], "g.onnx", "graph") == ["tree"]
    assert demo._class_names(unreadable, ["shrub"], "g.onnx", "graph") == ["shrub"]
    assert demo._class_names(cfg, None, "g.onnx", "graph") == ["tree"]  # model.json without names: not compared


def test_evaluate_onnx_refuses_a_graph_exported_for_other_class_names(export_tool, tiny_export, tmp_path):
    # --onnx --evaluate scored a graph of other classes of the same count as the test set's, without a word
    shrub = _renamed_tree_graph(tiny_export, tmp_path / "shrub", ["shrub"])
    argv = ["--config-file", str(TREE_CONFIG), "--output", str(tmp_path / "out"), "--onnx", shrub, "--evaluate",
            "--threads", "1"]
    with pytest.raises(ValueError) as refused:
        export_tool.main(export_tool.parse_args(argv))
    assert str(refused.value) == _graph_refusal(shrub, "the evaluation would score the graph's classes")
    assert not (tmp_path / "out" / "evaluation.json").exists()
