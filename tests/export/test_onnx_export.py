"""ONNX export: one graph traced at one size gives the PyTorch model's detections and token counts at other sizes,
matches the official fixture's outputs, is plain ONNX, and refuses bad inputs with one line."""
import json
import os
import sys

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from conftest import REPO_ROOT, TINY_CONFIG, build_tiny_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

sys.path.insert(0, str(REPO_ROOT / "tests" / "tools"))
from tools_test_utils import load_script  # noqa: E402
from export_test_utils import check_against_pytorch, copy_graph, noise_png, tiny_model  # noqa: E402

from focus_detr.export import OnnxPredictor, export_onnx, match_detections  # noqa: E402

TREE_CONFIG = REPO_ROOT / "configs" / "focus_detr_r18_trees.py"
# parity tolerances of tools/check_parity.py
SCORE_TOL = 1e-4
BOX_TOL = 1e-4  # of the image's longer side, in pixels


def test_tiny_graph_matches_pytorch_at_other_sizes(tiny_export, parity_fixture):
    predictor = OnnxPredictor(str(tiny_export / "model.onnx"), num_threads=1)
    # 160x192 keeps fewer than 300 tokens in the second layer: the fine-grained count follows the layer's count
    check_against_pytorch(tiny_model(parity_fixture), predictor, [(256, 320), (320, 224), (160, 192)])


def test_tiny_graph_matches_the_official_fixture(tiny_export, parity_fixture):
    predictor = OnnxPredictor(str(tiny_export / "model.onnx"), num_threads=1)
    for item, expected in zip(parity_fixture["inputs"], parity_fixture["eval_outputs"]["single"]):
        ours = predictor(item["image"], item["height"], item["width"])
        official = expected["postprocessed"][0]
        assert len(ours) == official["num"]
        assert (ours.scores - official["scores"]).abs().max() <= SCORE_TOL
        box_tol = BOX_TOL * max(item["height"], item["width"])
        for i in range(100):
            fits = (
                (ours.pred_classes == official["labels"][i])
                & ((ours.scores - official["scores"][i]).abs() <= SCORE_TOL)
                & ((ours.pred_boxes.tensor - official["boxes_xyxy"][i]).abs().max(-1)[0] <= box_tol)
            )
            assert fits.any(), f"official detection {i} has no counterpart"
        # the official code computes all six cascade counts; the tiny encoder uses the first two
        official_counts = [inds.shape[1] for inds in expected["debug"]["encoder_in"]["foreground_inds"]][:2]
        assert predictor.run(item["image"])["encoder_token_counts"].tolist() == official_counts


def test_graph_is_plain_onnx_with_metadata(tiny_export):
    path = str(tiny_export / "model.onnx")
    onnx.checker.check_model(path)
    graph = onnx.load(path).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}
    assert "GridSample" in {node.op_type for node in graph.node}
    image = graph.input[0].type.tensor_type
    assert image.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value or d.dim_param for d in image.shape.dim] == [3, "height", "width"]
    metadata = json.loads((tiny_export / "model.json").read_text())
    assert metadata["batch_size"] == 1 and metadata["opset"] == 17 and metadata["msda_form"] == "grid_sample"
    assert metadata["input"]["format"] == "RGB"
    assert metadata["cascade_keep_ratios"] == [1.0, 0.8] and metadata["keep_ratio"] == 0.5
    assert metadata["num_detections"] == 300 and metadata["file_size_mib"] > 0


def test_tree_config_graph_matches_pytorch_at_other_sizes(border_reaching_export):
    model, predictor = border_reaching_export  # traced at 128x160
    # 320x64 and 64x448: the coarsest level is one token wide / high (a traced linspace divided by zero there)
    sizes = [(256, 320), (320, 384), (384, 480), (320, 64), (64, 448)]
    check_against_pytorch(model, predictor, sizes)


def test_clip_to_image_is_detectron2s_clip_and_empty_box_filter():
    from detectron2.structures import Boxes

    from focus_detr.export.onnx_export import clip_to_image

    height, width = 30, 50
    boxes = torch.tensor([
        [-5.0, -1.0, 60.0, 40.0],  # past every border
        [10.0, 5.0, 20.0, 25.0],  # inside
        [55.0, 5.0, 70.0, 25.0],  # right of the image: empty once clipped
        [10.0, -9.0, 20.0, -1.0],  # above the image: empty once clipped
        [50.0, 30.0, 50.0, 30.0],  # a point on the corner
        [0.0, 0.0, 50.0, 30.0],  # the whole image
    ])
    ours, keep = clip_to_image(boxes, torch.tensor([width, height, width, height], dtype=torch.float32))
    reference = Boxes(boxes.clone())
    reference.clip((height, width))
    assert torch.equal(ours, reference.tensor)
    assert keep.tolist() == reference.nonempty().tolist() == [True, True, False, False, False, True]


@pytest.fixture(scope="module")
def border_reaching_export(tmp_path_factory):
    """The tree model (random weights) with its box heads biased towards wide, tall boxes, so that most of its
    detections reach past the image border; exported at 128x160. Returns the model and an OnnxPredictor. (The bias
    changes no part of the graph: it is also the tree config's graph that other sizes are checked on.)"""
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(str(TREE_CONFIG)).model).eval()
    with torch.no_grad():
        for head in model.bbox_embed:
            head.layers[-1].bias[2:] = 0.5  # width and height logits
    path = str(tmp_path_factory.mktemp("border") / "trees.onnx")
    export_onnx(model, path, torch.zeros(3, 128, 160, dtype=torch.uint8))
    return model, OnnxPredictor(path, num_threads=1)


@pytest.fixture(scope="module")
def tree_picture():
    """A trees_val tile, ``(H, W, 3)`` uint8 RGB."""
    import numpy as np
    from detectron2.data import DatasetCatalog
    from PIL import Image

    from focus_detr.data import register_trees

    register_trees()
    return np.asarray(Image.open(DatasetCatalog.get("trees_val")[0]["file_name"]).convert("RGB"))


# the tile's own size (345x416), square, thin and tall, and sizes that are no multiple of the backbone's stride
@pytest.mark.parametrize("size", [(345, 416), (352, 352), (160, 288), (301, 187)])
def test_graph_clips_boxes_like_pytorch_on_a_tree_picture(border_reaching_export, tree_picture, size):
    import numpy as np
    from detectron2.structures import Boxes, Instances
    from PIL import Image

    model, predictor = border_reaching_export
    height, width = size
    image = torch.from_numpy(np.asarray(Image.fromarray(tree_picture).resize((width, height), Image.BILINEAR)))
    image = image.permute(2, 0, 1).contiguous()
    with torch.no_grad():
        reference = model([{"image": image}])[0]["instances"]
    top = reference.pred_boxes.tensor[reference.scores.argsort(descending=True)[:100]]
    on_border = (top[:, :2] == 0).any(1) | (top[:, 2] == width) | (top[:, 3] == height)
    assert on_border.sum() >= 30, "the model's boxes should reach past the border here"

    # the graph's own outputs, as a runtime other than OnnxPredictor sees them (no detectron2 post-processing)
    outputs = predictor.run(image)
    boxes = torch.from_numpy(outputs["boxes"])
    graph = Instances((height, width), pred_boxes=Boxes(boxes), scores=torch.from_numpy(outputs["scores"]),
                      pred_classes=torch.from_numpy(outputs["labels"]))
    assert len(graph) == len(reference)
    assert match_detections(reference, graph, top=100) == (100, 100)
    assert boxes.min() >= 0 and boxes[:, 0::2].max() <= width and boxes[:, 1::2].max() <= height
    # where PyTorch clipped a coordinate, the graph's is the same border exactly
    order = graph.scores.argsort(descending=True)[:100]
    graph_top = boxes[order]
    assert torch.equal(top == 0, graph_top == 0)
    assert torch.equal(top[:, 0::2] == width, graph_top[:, 0::2] == width)
    assert torch.equal(top[:, 1::2] == height, graph_top[:, 1::2] == height)

    # rescaled to the tile's own size (416 / 352 in float32 times 352 falls short of 416), as the demo does
    original = tree_picture.shape[:2]
    with torch.no_grad():
        reference = model([{"image": image, "height": original[0], "width": original[1]}])[0]["instances"]
    ours = predictor(image, *original)
    assert match_detections(reference, ours, top=100) == (100, 100)
    top = reference.pred_boxes.tensor[reference.scores.argsort(descending=True)[:100]]
    ours_top = ours.pred_boxes.tensor[ours.scores.argsort(descending=True)[:100]]
    assert torch.equal(top[:, 0::2] == original[1], ours_top[:, 0::2] == original[1])
    assert torch.equal(top[:, 1::2] == original[0], ours_top[:, 1::2] == original[0])


def test_predictor_rejects_bad_images_with_one_line(tiny_export):
    predictor = OnnxPredictor(str(tiny_export / "model.onnx"), num_threads=1)
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    for bad, message in (
        (image.float(), "must be uint8"),
        (image[0], r"got shape \(64, 64\)"),
        (image[None], r"got shape \(1, 3, 64, 64\)"),
        (image[:1], r"got shape \(1, 64, 64\)"),
        ([[1, 2]], "torch tensor or numpy array"),
    ):
        with pytest.raises(ValueError, match=message) as info:
            predictor(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError):
        OnnxPredictor(str(tiny_export / "missing.onnx"))


def test_export_tool_reports_bad_config_and_checkpoint_in_one_line(export_tool, fixture_checkpoint, tmp_path, capfd):
    cases = [
        [str(TINY_CONFIG), "model.no_such_key=1"],
        [str(tmp_path / "missing.py")],
        [str(TINY_CONFIG), f"+train.init_checkpoint={tmp_path / 'missing.pth'}"],
        # the official tiny weights do not fit the tree model
        [str(TREE_CONFIG), f"train.init_checkpoint={fixture_checkpoint}"],
    ]
    for config, *overrides in cases:
        argv = ["--config-file", config, "--output", str(tmp_path / "out"), *overrides]
        code = export_tool.run_reporting_errors(export_tool.main, export_tool.parse_args(argv))
        err = capfd.readouterr().err.strip().splitlines()
        assert code == 2, argv
        assert len([line for line in err if line.startswith("error:")]) == 1, err
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_demo_draws_the_same_detections_from_onnxruntime(tiny_export, fixture_checkpoint, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    demo = load_script("demo/demo.py", "demo")
    image_path = tmp_path / "noise.png"
    # without a test loader in the config the demo resizes to 800/1333: a thin image stays small (100x1333)
    pixels = np.random.default_rng(0).integers(0, 256, (30, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image_path)
    printed = {}
    for name, extra in (
        ("pytorch", [f"+train.init_checkpoint={fixture_checkpoint}"]),
        ("onnx", ["--onnx", str(tiny_export / "model.onnx")]),
    ):
        argv = ["--config-file", str(TINY_CONFIG), "--input", str(image_path), "--output", str(tmp_path / name),
                "--confidence-threshold", "0.02", *extra]
        written = demo.main(demo.parse_args(argv))
        assert [os.path.basename(p) for p in written] == ["noise_detections.png"]
        printed[name] = capsys.readouterr().out.split(": ", 1)[1].split(" -> ")[0]
    assert printed["onnx"] == printed["pytorch"]
    assert not printed["onnx"].startswith("0 ")
    with pytest.raises(ValueError, match="--show-tokens"):
        demo.main(demo.parse_args(["--config-file", str(TINY_CONFIG), "--input", str(image_path), "--output",
                                   str(tmp_path / "x"), "--onnx", str(tiny_export / "model.onnx"), "--show-tokens"]))


def test_export_tool_benchmark_times_pytorch_and_both_msda_forms(export_tool, tmp_path):
    output = tmp_path / "bench"
    failures = export_tool.main(export_tool.parse_args([
        "--config-file", str(TINY_CONFIG), "--output", str(output), "--sample-size", "160", "192", "--threads", "1",
        "--benchmark", "160x192", "--warmup", "0", "--repeats", "1", "--compare-msda-forms",
    ]))
    assert failures == []
    report = json.loads((output / "benchmark.json").read_text())
    assert report["msda_form"] == "grid_sample" and report["threads"] == 1
    (row,) = report["rows"]
    assert row["size"] == "160x192" and row["repeats"] == 1
    assert min(row["pytorch_ms"], row["onnxruntime_ms"], row["onnxruntime_gather_ms"]) > 0
    assert (output / "model_gather.onnx").is_file()


def test_predictor_reports_a_graph_that_cannot_run_an_image_in_one_line(tmp_path):
    from onnx import TensorProto, helper

    from focus_detr.export import INPUT_NAME, OUTPUT_NAMES

    # an export's inputs and outputs around a reshape fixed to 4x4 images, as in a graph that runs at one size only
    def constant(name, values):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values))

    nodes = [
        constant("fixed", [3, 4, 4]),
        constant("rows", [-1, 4]),
        helper.make_node("Reshape", [INPUT_NAME, "fixed"], ["reshaped"]),
        helper.make_node("Cast", ["reshaped"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["as_float", "rows"], [OUTPUT_NAMES[0]]),
    ]
    nodes += [constant(name, [0]) for name in OUTPUT_NAMES[1:]]
    graph = helper.make_graph(
        nodes,
        "fixed_size",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [3, "height", "width"])],
        [helper.make_tensor_value_info(OUTPUT_NAMES[0], TensorProto.FLOAT, [12, 4])]
        + [helper.make_tensor_value_info(name, TensorProto.INT64, [1]) for name in OUTPUT_NAMES[1:]],
    )
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    predictor = OnnxPredictor(str(path), num_threads=1)
    assert predictor.run(torch.zeros(3, 4, 4, dtype=torch.uint8))["boxes"].shape == (12, 4)
    with pytest.raises(ValueError, match=r"onnxruntime cannot run .*fixed.onnx on a 5x4 image: .*Reshape") as info:
        predictor(torch.zeros(3, 5, 4, dtype=torch.uint8))
    assert "\n" not in str(info.value)
    # a damaged model.json next to the graph is named, not a bare json error
    (tmp_path / "model.json").write_text('{"input": ')
    with pytest.raises(ValueError, match=r"model.json \(the graph's metadata\) is not readable json: .*export the "):
        OnnxPredictor(str(path), num_threads=1)
    (tmp_path / "model.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"model.json \(the graph's metadata\) is not a json object"):
        OnnxPredictor(str(path), num_threads=1)


def test_missing_onnx_packages_give_one_line(export_tool, tiny_export, tmp_path, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ValueError, match="^onnxruntime not installed: .*requirements/export.txt") as info:
        OnnxPredictor(str(tiny_export / "model.onnx"))
    assert "\n" not in str(info.value)
    argv = ["--config-file", str(TINY_CONFIG), "--output", str(tmp_path / "out")]
    assert export_tool.run_reporting_errors(export_tool.main, export_tool.parse_args(argv)) == 2
    assert capfd.readouterr().err.strip() == f"error: {info.value}"
    assert not (tmp_path / "out").exists()


def test_demo_annotates_a_video_from_onnxruntime_as_from_pytorch(tiny_export, fixture_checkpoint, tmp_path, capsys):
    import cv2
    import numpy as np

    demo = load_script("demo/demo.py", "demo")
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (400, 30))  # thin: 100x1333 in the model
    for seed in range(3):
        writer.write(np.random.default_rng(seed).integers(0, 256, (30, 400, 3), dtype=np.uint8))
    writer.release()
    frames = {}
    for name, threshold, extra in (
        ("pytorch", "0.02", [f"+train.init_checkpoint={fixture_checkpoint}"]),
        ("onnx", "0.02", ["--onnx", str(tiny_export / "model.onnx")]),
        ("onnx_no_boxes", "1.0", ["--onnx", str(tiny_export / "model.onnx")]),
    ):
        output = str(tmp_path / f"{name}.avi")
        demo.main(demo.parse_args(["--config-file", str(TINY_CONFIG), "--video-input", video, "--output", output,
                                   "--confidence-threshold", threshold, *extra]))
        capture = cv2.VideoCapture(output)
        frames[name] = np.stack([capture.read()[1] for _ in range(3)]).astype(int)
        assert not capture.read()[0]
    assert capsys.readouterr().out.count(" 3 frames at 5 fps -> ") == 3
    assert np.abs(frames["onnx"] - frames["pytorch"]).mean() < 0.5  # the same boxes (up to rounding and MJPG)
    assert np.abs(frames["onnx"] - frames["onnx_no_boxes"]).max() > 100  # and there are boxes


def test_export_tool_refuses_an_opset_torch_cannot_export_in_one_line(export_tool, tmp_path, capfd):
    from torch.onnx import _constants

    # the highest opset torch writes (past it the export failed with a traceback)
    highest = _constants.ONNX_MAX_OPSET
    for opset in (15, highest + 1, 99):
        argv = ["--config-file", str(TINY_CONFIG), "--output", str(tmp_path / "out"), "--opset", str(opset)]
        code = export_tool.run_reporting_errors(export_tool.main, export_tool.parse_args(argv))
        err = capfd.readouterr().err.strip().splitlines()
        assert code == 2, opset
        assert len(err) == 1 and err[0].startswith(f"error: --opset must be between 16 and {highest}, got {opset} ")
    assert not (tmp_path / "out").exists()  # refused before the model was built
    from focus_detr.export import max_export_opset

    assert max_export_opset() == highest
    with pytest.raises(ValueError, match=f"^opset {highest + 1} is above {highest}, the highest torch"):
        export_onnx(build_tiny_model().eval(), str(tmp_path / "model.onnx"), torch.zeros(3, 64, 64, dtype=torch.uint8),
                    opset=highest + 1)


def test_predictor_refuses_output_sizes_that_are_not_positive_integers(tiny_export):
    import numpy as np

    predictor = OnnxPredictor(str(tiny_export / "model.onnx"), num_threads=1)
    image = torch.zeros(3, 64, 96, dtype=torch.uint8)
    # 0 silently meant "no rescale", -5 gave no detection at all, "64" a bare TypeError
    for height, width in ((0, 0), (-5, 10), ("64", "80"), (64.5, 80), (True, 80), (64, 0)):
        name = "width" if height == 64 else "height"
        with pytest.raises(ValueError, match=f"^OnnxPredictor: {name} must be a positive integer") as info:
            predictor(image, height, width)
        assert "\n" not in str(info.value)
    assert predictor(image).image_size == (64, 96)  # None: the input's own size
    rescaled = predictor(image, np.int64(128), 192)
    assert rescaled.image_size == (128, 192) and len(rescaled) > 0


def test_demo_refuses_a_config_that_does_not_fit_the_graph_in_one_line(tiny_export, tmp_path, capfd):
    from cli_output import shows_traceback

    demo = load_script("demo/demo.py", "demo")
    image = noise_png(tmp_path / "noise.png")
    # the tree config's test-time resize (352 / 512), that the graph was exported with: only the tested entry differs
    tree_resize = {"resize": {"short_edge": 352, "max_size": 512, "interpolation": 2}}
    one_class_rgb = copy_graph(tiny_export, tmp_path / "one_class", {"num_classes": 1, **tree_resize})
    classes_80 = copy_graph(tiny_export, tmp_path / "classes_80", tree_resize)
    cases = [
        # the graph takes RGB: fed BGR it found 11 instead of 23 trees, silently
        ([str(TREE_CONFIG), "dataloader.test.mapper.img_format=BGR"], one_class_rgb,
         f"error: {one_class_rgb} (its model.json) takes RGB images but the config's test loader gives BGR "
         "(dataloader.test.mapper.img_format): use the config it was exported from"),
        # an 80-class graph named and drawn with a one-class config (and the other way round: 0 detections)
        ([str(TREE_CONFIG)], classes_80,
         f"error: {classes_80} (its model.json) predicts 80 classes but the config's model has 1 "
         "(model.num_classes): use the config it was exported from"),
        # both, and the tiny config's resize (800 / 1333): all three named
        ([str(TREE_CONFIG), "dataloader.test.mapper.img_format=BGR"], str(tiny_export / "model.onnx"),
         f"error: {tiny_export / 'model.onnx'} (its model.json) takes RGB images but the config's test loader gives "
         "BGR (dataloader.test.mapper.img_format) and predicts 80 classes but the config's model has 1 "
         "(model.num_classes) and was exported for images resized to a short edge of 800 pixels, the long one at "
         "most 1333 but the config's test loader resizes them to a short edge of 352 pixels, the long one at most "
         "512 (dataloader.test.mapper.augmentation): use the config it was exported from"),
    ]
    for (config, *overrides), graph, message in cases:
        argv = ["--config-file", config, "--input", image, "--output", str(tmp_path / "out"), "--onnx", graph,
                *overrides]
        code = demo.run_reporting_errors(demo.main, demo.parse_args(argv))
        err = capfd.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and errors[0].startswith(message), errors
        assert not shows_traceback(err)
    assert not (tmp_path / "out").exists()  # nothing drawn


def test_demo_warns_once_and_runs_a_graph_without_model_json(tiny_export, tmp_path, capfd):
    demo = load_script("demo/demo.py", "demo")
    image = noise_png(tmp_path / "noise.png")
    bare = copy_graph(tiny_export, tmp_path / "exported_elsewhere")
    printed = {}
    for name, graph in (("with_model_json", str(tiny_export / "model.onnx")), ("without", bare)):
        argv = ["--config-file", str(TINY_CONFIG), "--input", image, "--output", str(tmp_path / name),
                "--confidence-threshold", "0.02", "--onnx", graph]
        assert demo.run_reporting_errors(demo.main, demo.parse_args(argv)) == 0
        captured = capfd.readouterr()
        printed[name] = captured.out.split(": ", 1)[1].split(" -> ")[0], [
            line for line in captured.err.splitlines() if line.startswith(("warning:", "error:"))
        ]
    assert printed["with_model_json"][1] == []
    assert printed["without"][1] == [
        f"warning: {bare} has no model.json next to it (exported elsewhere?): its input format and classes cannot be "
        "checked against the config's; it is fed RGB images and its labels are named as in the config"
    ]
    assert printed["without"][0] == printed["with_model_json"][0]  # the same detections


def test_a_graph_that_fails_at_another_size_than_it_was_traced_at_says_which(tiny_export):
    # a graph whose backbone froze its sizes while traced (detectron2's Swin did, before TraceableSwin) runs only at
    # its --sample-size: the error was onnxruntime's Reshape message alone
    predictor = OnnxPredictor(str(tiny_export / "model.onnx"), num_threads=1)

    class FailingSession:
        def run(self, *args):
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape")

    predictor.session = FailingSession()
    predictor.model_json["sample_size"] = [320, 416]
    with pytest.raises(ValueError) as info:
        predictor(torch.zeros(3, 352, 448, dtype=torch.uint8))
    assert str(info.value).endswith("running Reshape (the graph was traced at 320x416, its model.json says: a backbone "
                                    "that freezes its shapes while traced runs only at that size; "
                                    "export again with --sample-size 352 448, the network-input size of your images)")
