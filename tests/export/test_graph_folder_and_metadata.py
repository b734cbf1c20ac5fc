"""What an export folder and its model.json promise: a new export replaces the earlier one's results, model.json is
checked before it is trusted, and the demo says when the graph it runs carries other weights than asked for."""
import json
import os
import re

import pytest
import torch

from conftest import TINY_CONFIG

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export_test_utils import copy_graph, noise_png  # noqa: E402
from tools_test_utils import load_script  # noqa: E402

from focus_detr.export import OnnxPredictor, check_graph_fits_config, graph_weights  # noqa: E402

TREE_CONFIG = TINY_CONFIG.parents[1] / "focus_detr_r18_trees.py"


def _stderr_lines(err, *prefixes):
    return [line for line in err.splitlines() if line.startswith(prefixes)]


def test_a_new_export_removes_what_was_written_about_the_earlier_graph(export_tool, tmp_path, capfd):
    # a re-export left evaluation.json claiming the earlier graph's AP for the new graph
    output = tmp_path / "onnx"
    output.mkdir()
    (output / "model.onnx").write_bytes(b"the earlier graph")
    (output / "evaluation.json").write_text("{}")
    (output / "evaluation" / "onnx").mkdir(parents=True)
    (output / "model_gather.onnx").write_bytes(b"")
    (output / "notes.txt").write_text("the user's")
    export_tool.main(export_tool.parse_args([
        "--config-file", str(TINY_CONFIG), "--output", str(output), "--sample-size", "160", "192", "--threads", "1",
        "model.num_classes=3",
    ]))
    err = capfd.readouterr().err
    assert (f"replaced the earlier export in {output}; removed its evaluation.json, evaluation, model_gather.onnx"
            in err)
    assert sorted(p.name for p in output.iterdir()) == ["model.json", "model.onnx", "notes.txt"]
    metadata = json.loads((output / "model.json").read_text())
    assert metadata["overrides"] == ["model.num_classes=3"] and metadata["init_checkpoint"] == ""


def test_an_export_that_stops_leaves_the_earlier_export_whole(export_tool, tmp_path, monkeypatch):
    # an interrupted re-export had removed the earlier graph's evaluation and kept its graph; traced in place, a
    # torn model.onnx could sit next to the earlier model.json
    output = tmp_path / "onnx"
    output.mkdir()
    earlier = {"model.onnx": "the earlier graph", "model.json": "{}", "evaluation.json": "{}"}
    for name, text in earlier.items():
        (output / name).write_text(text)

    def interrupted_trace(model, path, *args):
        with open(path, "wb") as f:
            f.write(b"half a graph")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_tool, "export_onnx", interrupted_trace)
    with pytest.raises(KeyboardInterrupt):
        export_tool.main(export_tool.parse_args([
            "--config-file", str(TINY_CONFIG), "--output", str(output), "--sample-size", "160", "192",
            "--threads", "1"]))
    assert {p.name: p.read_text() for p in output.iterdir()} == earlier


def test_an_export_removes_the_files_killed_exports_left_and_keeps_those_being_written(export_tool, tmp_path,
                                                                                         monkeypatch, capfd):
    # an export killed midway (kill -9) left its hidden temporary graph (185 MiB for R50) for good
    from focus_detr.partial_files import PartialPath, remove_abandoned

    output = tmp_path / "onnx"
    output.mkdir()
    (output / ".export.killed.partial").mkdir()
    (output / ".export.killed.partial" / "model.onnx").write_bytes(b"half a graph")
    (output / ".model.killed.onnx.partial").write_bytes(b"half a graph")  # an earlier version's names
    (output / ".model.json.killed.tmp").write_text("{")
    real_export = export_tool.export_onnx

    def export_checking_the_lock(model, path, *args):
        seconds = real_export(model, path, *args)
        # the folder torch wrote into is the one locked as being written, not another of the same name
        assert remove_abandoned(output, ".export.", ".partial", folders=True) == []
        return seconds

    monkeypatch.setattr(export_tool, "export_onnx", export_checking_the_lock)
    with PartialPath(output, prefix=".export.", suffix=".partial", folder=True) as running:  # another export, going
        export_tool.main(export_tool.parse_args([
            "--config-file", str(TINY_CONFIG), "--output", str(output), "--sample-size", "160", "192",
            "--threads", "1"]))
        assert sorted(p.name for p in output.iterdir()) == sorted(
            ["model.json", "model.onnx", os.path.basename(running.path)])
    assert ("removed 3 temporary file(s) or folder(s) left by an interrupted export or evaluation: "
            ".export.killed.partial, .model.killed.onnx.partial, .model.json.killed.tmp") in capfd.readouterr().err


def test_a_graph_predicts_a_raw_image_from_its_folder_alone(tiny_export, fixture_checkpoint, tmp_path):
    # model.json held no test-time resize: a deployment needed the Python config to prepare images, and an image fed
    # unresized ran without a word and found other objects
    import cv2

    from focus_detr import FocusDETRPredictor
    from focus_detr.export import match_detections

    metadata = json.loads((tiny_export / "model.json").read_text())
    assert metadata["resize"] == {"short_edge": 800, "max_size": 1333, "interpolation": 2}  # no test loader: default
    image = cv2.imread(noise_png(tmp_path / "noise.png", (120, 200, 3)))
    graph = OnnxPredictor(str(tiny_export / "model.onnx")).predict_image(image)
    pytorch = FocusDETRPredictor(str(TINY_CONFIG), weights=fixture_checkpoint)(image)["instances"]
    assert graph.image_size == (120, 200)
    matched, compared = match_detections(pytorch.to("cpu"), graph)
    assert compared > 0 and matched == compared
    unresizable = OnnxPredictor(copy_graph(tiny_export, tmp_path / "old", {"resize": None}))
    with pytest.raises(ValueError, match=r"model.json does not say how to resize an image for .*: export it again"):
        unresizable.predict_image(image)


@pytest.mark.parametrize("changes, message", [
    ({"input": "RGB"}, 'has input = "RGB", not a json object'),
    ({"resize": {"short_edge": "800", "max_size": 1333, "interpolation": 2}}, 'has resize.short_edge = "800", not a '
                                                                              'int'),
    ({"input": {"format": 3}}, "has input.format = 3, not a str"),
    ({"num_classes": "80"}, 'has num_classes = "80", not a int'),
    ({"num_classes": True}, "has num_classes = true, not a int"),
    ({"init_checkpoint": ["a.pth"]}, 'has init_checkpoint = ["a.pth"], not a str'),
    # values no export writes (a file edited by hand): a 10**6-pixel side ran out of memory, 0 did not resize, a
    # format other than RGB / BGR failed naming the config, class names of another count were drawn as given
    ({"resize": {"short_edge": 10**6, "max_size": 1333, "interpolation": 2}}, "has resize.short_edge = 1000000, not "
                                                                              "a side of 0 to 8192 pixels"),
    ({"resize": {"short_edge": 800, "max_size": 0, "interpolation": 2}},
     "has resize.max_size = 0, not at least 1 pixel"),
    ({"resize": {"short_edge": 800, "max_size": 1333, "interpolation": 99}}, "has resize.interpolation = 99, not one "
                                                                             "of PIL's filters (0 to 5)"),
    ({"input": {"format": "XYZ"}}, 'has input.format = "XYZ", not "RGB" or "BGR"'),
    ({"num_classes": 0}, "has num_classes = 0, not at least 1"),
    ({"num_classes": 1, "class_names": ["a", "b", "c"], "category_ids": [1]}, "has 3 class_names for num_classes = 1"),
    ({"num_classes": 1, "class_names": [5], "category_ids": [1]}, "has class_names = [5], not a list of strs"),
])
def test_model_json_of_other_types_is_one_line(tiny_export, tmp_path, changes, message):
    # {"input": "RGB"} was an AttributeError traceback in the demo
    graph = copy_graph(tiny_export, tmp_path / "graph", changes)
    expected = f"model.json (the graph's metadata) {message}: export the graph again"
    with pytest.raises(ValueError, match=re.escape(expected)):
        OnnxPredictor(graph)


@pytest.mark.parametrize("resize", [{"short_edge": 800, "max_size": 9223372036854775807, "interpolation": 2},
                                    {"short_edge": 0, "max_size": 1333, "interpolation": 2}])
def test_model_json_of_every_resize_detectron2_configs_take_is_accepted(tiny_export, tmp_path, resize):
    # ResizeShortestEdge(800) writes its default max_size, sys.maxsize; a short edge of 0 is "do not resize"
    assert OnnxPredictor(copy_graph(tiny_export, tmp_path / "graph", {"resize": resize})).model_json["resize"] == resize


def test_the_class_count_refusal_names_the_overrides_the_graph_was_exported_with(tiny_export, tmp_path):
    # it said "use the config it was exported from (configs/x.py)" when that was the config given
    from focus_detr.engine import load_config

    graph = copy_graph(tiny_export, tmp_path / "graph", {"num_classes": 3, "config_file": str(TINY_CONFIG),
                                                         "overrides": ["model.num_classes=3"]})
    with pytest.raises(ValueError, match=rf"use the config it was exported from \({TINY_CONFIG} with "
                                         r"model.num_classes=3\)"):
        check_graph_fits_config(load_config(str(TINY_CONFIG)), OnnxPredictor(graph))


def test_a_graph_exported_with_another_resize_than_the_config_s_is_refused_in_one_line(tiny_export, tmp_path, capfd):
    # the demo resized as the config says and predict_image as model.json says: other boxes for one image and graph
    from focus_detr.engine import load_config

    graph = copy_graph(tiny_export, tmp_path / "graph", {"resize": {"short_edge": 512, "max_size": 800,
                                                                    "interpolation": 2}})
    expected = ("model.json) was exported for images resized to a short edge of 512 pixels, the long one at most 800 "
                "but the config's test loader resizes them to a short edge of 800 pixels, the long one at most 1333 "
                "(dataloader.test.mapper.augmentation): use the config it was exported from")
    cfg = load_config(str(TINY_CONFIG))
    with pytest.raises(ValueError, match=re.escape(expected)):
        check_graph_fits_config(cfg, OnnxPredictor(graph))
    assert check_graph_fits_config(cfg, OnnxPredictor(str(tiny_export / "model.onnx"))) is None
    demo = load_script("demo/demo.py", "demo")
    argv = ["--config-file", str(TINY_CONFIG), "--input", noise_png(tmp_path / "noise.png"), "--output",
            str(tmp_path / "out"), "--onnx", graph]
    assert demo.run_reporting_errors(demo.main, demo.parse_args(argv)) == 2
    assert expected in _stderr_lines(capfd.readouterr().err, "error:")[0]
    # an entry missing a field (an older or edited model.json) is no resize to compare, as predict_image reads it:
    # it was a KeyError traceback
    partial = copy_graph(tiny_export, tmp_path / "partial", {"resize": {"short_edge": 512}})
    assert check_graph_fits_config(cfg, OnnxPredictor(partial)) is None


def test_graph_weights_names_what_the_graph_was_exported_from_when_it_differs(tiny_export, tmp_path):
    trained = OnnxPredictor(copy_graph(tiny_export, tmp_path / "trained", {"init_checkpoint": "out/model_final.pth"}))
    random = OnnxPredictor(copy_graph(tiny_export, tmp_path / "random", {"init_checkpoint": ""}))
    unknown = OnnxPredictor(copy_graph(tiny_export, tmp_path / "unknown"))
    assert graph_weights(trained, "out/model_final.pth") is None
    assert graph_weights(trained, "out/../out/model_final.pth") is None  # the same file
    assert graph_weights(trained, "other.pth") == "'out/model_final.pth'"
    assert graph_weights(trained, "") == "'out/model_final.pth'"
    assert graph_weights(random, "") is None
    assert graph_weights(random, "out/model_final.pth") == "random weights"
    assert graph_weights(unknown, "other.pth") is None


def test_graph_weights_names_the_ema_weights_of_the_same_file(tiny_export, tmp_path):
    # a graph exported from a checkpoint's average, scored against PyTorch running its trained weights, read as a
    # broken export (AP 6.15 against 0.02) with no word
    ema = OnnxPredictor(copy_graph(tiny_export, tmp_path / "ema", {"init_checkpoint": "a.pth", "weights": "ema"}))
    assert graph_weights(ema, "a.pth", "trained") == "the EMA weights of 'a.pth'"
    assert graph_weights(ema, "a.pth", "ema") is None
    assert graph_weights(ema, "a.pth") is None  # not known which weights the other side runs
    trained = OnnxPredictor(copy_graph(tiny_export, tmp_path / "trained", {"init_checkpoint": "a.pth",
                                                                           "weights": "trained"}))
    assert graph_weights(trained, "a.pth", "ema") == "the trained weights of 'a.pth'"


def test_demo_says_when_the_graph_carries_other_weights_than_asked_for(tiny_export, fixture_checkpoint, tmp_path,
                                                                        capfd):
    # a random-weights graph drew 0 trees where the trained one draws 29, with status 0 and no word
    demo = load_script("demo/demo.py", "demo")
    image = noise_png(tmp_path / "noise.png")
    random = copy_graph(tiny_export, tmp_path / "random", {"init_checkpoint": ""})
    cases = [
        (random, [], f"warning: {random} was exported from random weights (its model.json): its detections are that "
                     "model's"),
        (random, [f"+train.init_checkpoint={fixture_checkpoint}"],
         f"warning: {random} was exported from random weights (its model.json), not from train.init_checkpoint "
         f"'{fixture_checkpoint}': its detections are that model's"),
        (str(tiny_export / "model.onnx"), [f"+train.init_checkpoint={fixture_checkpoint}"], None),
        (str(tiny_export / "model.onnx"), [], None),  # the graph's own weights, not named: nothing to say
    ]
    for index, (graph, overrides, expected) in enumerate(cases):
        argv = ["--config-file", str(TINY_CONFIG), "--input", image, "--output", str(tmp_path / f"out{index}"),
                "--onnx", graph, *overrides]
        assert demo.run_reporting_errors(demo.main, demo.parse_args(argv)) == 0
        assert _stderr_lines(capfd.readouterr().err, "warning:", "error:") == ([expected] if expected else [])


def test_the_graphs_metadata_names_its_classes_for_detectron2s_visualizer(tiny_export, tmp_path):
    # OnnxPredictor.metadata was model.json's dict: Visualizer read no thing_classes from it and labelled the
    # boxes with numbers, where DefaultPredictor.metadata and FocusDETRPredictor.metadata are detectron2's Metadata
    import numpy as np
    from detectron2.data.catalog import Metadata
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.visualizer import Visualizer

    predictor = OnnxPredictor(copy_graph(tiny_export, tmp_path / "named", {
        "num_classes": 2, "class_names": ["oak", "pine"], "category_ids": [3, 7]}))
    metadata = predictor.metadata
    assert isinstance(metadata, Metadata) and metadata.thing_classes == ["oak", "pine"]
    assert metadata.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert predictor.model_json["num_classes"] == 2
    detections = Instances((40, 60), pred_boxes=Boxes([[1.0, 2.0, 30.0, 20.0]]), scores=torch.tensor([0.9]),
                           pred_classes=torch.tensor([1]))
    visualizer = Visualizer(np.zeros((40, 60, 3), np.uint8), metadata)
    labels = [text.get_text() for text in visualizer.draw_instance_predictions(detections).ax.texts]
    assert labels == ["pine 90%"]

    assert not hasattr(OnnxPredictor(copy_graph(tiny_export, tmp_path / "bare")).metadata, "thing_classes")
    with pytest.raises(ValueError, match=r"has class_names = \"oak\", not a list"):
        OnnxPredictor(copy_graph(tiny_export, tmp_path / "broken", {"class_names": "oak"}))
