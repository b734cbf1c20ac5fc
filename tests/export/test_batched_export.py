"""A batched ONNX graph (``export_onnx(batched=True)``, ``tools/export_model.py --batched``): one run of a padded batch
gives each image the detections and token counts the PyTorch model gives it in that batch, at any batch size and
image sizes, and bad batches are refused in one line."""
import json

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIG

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export_test_utils import tiny_model  # noqa: E402

from focus_detr.analysis.inputs import synthetic_inputs  # noqa: E402
from focus_detr.export import OnnxPredictor, pad_batch  # noqa: E402
from focus_detr.export.verification import compare_with_pytorch  # noqa: E402
from focus_detr.modeling.token_layout import image_padding_masks  # noqa: E402


@pytest.fixture(scope="module")
def batched_export(export_tool, fixture_checkpoint, tmp_path_factory):
    """The tiny configuration with the fixture's official weights, exported by the tool with --batched at 224x288."""
    output = tmp_path_factory.mktemp("tiny_batched_onnx")
    failures = export_tool.main(export_tool.parse_args([
        "--config-file", str(TINY_CONFIG), "--output", str(output), "--sample-size", "224", "288", "--batched",
        "--threads", "1", f"+train.init_checkpoint={fixture_checkpoint}",
    ]))
    assert failures == []
    return output


def _items(sizes, seed=5):
    return [synthetic_inputs(height, width, seed=seed + i)[0] for i, (height, width) in enumerate(sizes)]


@pytest.mark.parametrize("sizes", [
    [(224, 288)],
    [(256, 320)] * 3,  # one size: nothing padded
    [(224, 288), (200, 256)],  # the traced sizes in other images
    [(192, 256), (224, 224), (160, 240), (208, 208)],  # other sizes, another batch size
])
def test_batched_graph_gives_each_image_its_detections_in_pytorchs_batch(batched_export, parity_fixture, sizes):
    # Traced without the encoder's in-place writes only: the exporter dropped the scatter of a batch of several images
    # through a view, and every image of a batch got other detections (0 of 100 matched).
    model = tiny_model(parity_fixture)
    predictor = OnnxPredictor(str(batched_export / "model.onnx"), num_threads=1, decisions=True)
    line, ok = compare_with_pytorch(model, predictor, _items(sizes))
    assert ok and f"matched {', '.join(['100/100'] * len(sizes))}," in line and "query ranking" not in line, line


def test_batched_graph_runs_one_image_as_the_one_image_graph_does(batched_export, tiny_export):
    batched = OnnxPredictor(str(batched_export / "model.onnx"), num_threads=1)
    single = OnnxPredictor(str(tiny_export / "model.onnx"), num_threads=1)
    assert batched.batched and not single.batched
    image = synthetic_inputs(240, 200, seed=3)[0]["image"]
    ours, theirs = batched.run(image), single.run(image)
    assert ours.keys() == theirs.keys()
    for name in ("labels", "encoder_token_counts", "fine_grained_token_counts", "num_queries"):
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    for name in ("boxes", "scores"):
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-4, err_msg=name)
    instances = batched(image, 480, 400)
    assert instances.image_size == (480, 400) and len(instances) == len(single(image, 480, 400))


def test_predict_batch_rescales_each_image_and_reports_per_image_budgets(batched_export):
    predictor = OnnxPredictor(str(batched_export / "model.onnx"), num_threads=1)
    images = [item["image"] for item in _items([(224, 288), (200, 256)])]
    results = predictor.predict_batch(images, [(448, 576), (None, None)])
    assert [r.image_size for r in results] == [(448, 576), (200, 256)]
    alone = predictor.predict_batch(images)
    as_array = predictor.predict_batch(images, np.array([[448, 576], [200, 256]]))  # an (N, 2) array of sizes
    torch.testing.assert_close(as_array[0].pred_boxes.tensor, results[0].pred_boxes.tensor)
    torch.testing.assert_close(results[0].pred_boxes.tensor, alone[0].pred_boxes.tensor * 2)
    outputs = predictor.run_batch([image.numpy() for image in images])
    assert outputs["boxes"].shape[:2] == outputs["nonempty"].shape == (2, 300)
    budgets = outputs["focus_token_nums"]
    assert budgets[0] > budgets[1] and outputs["encoder_token_counts"][0] == budgets.max()
    metadata = json.loads((batched_export / "model.json").read_text())
    assert metadata["batch_size"] == "dynamic" and metadata["input"]["name"] == "images"


def test_bad_batches_are_refused_in_one_line(batched_export, tiny_export):
    predictor = OnnxPredictor(str(batched_export / "model.onnx"), num_threads=1)
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    outputs = predictor.run_batch([image, image])
    for call, message in (
        (lambda: predictor.run_batch([]), "non-empty list"),
        (lambda: predictor.run_batch(image), "non-empty list of uint8"),
        (lambda: predictor.run_batch([image, image.float()]), r"images\[1\] must be uint8"),
        (lambda: predictor.run_batch([image, image[:1]]), r"images\[1\] must be uint8 \(3, H, W\), got shape"),
        (lambda: predictor.predict_batch([image, image], [(10, 10)]), "one \\(height, width\\) per image"),
        (lambda: predictor.predict_batch([image], [(0, 10)]), "height must be a positive integer"),
        (lambda: predictor.predict_batch([image], [10]), "\\(height, width\\) pairs"),
        (lambda: OnnxPredictor(str(tiny_export / "model.onnx")).run_batch([image]), "export it with --batched"),
        (lambda: predictor.predict_batch([image, image], np.ones((3, 2), int)), r"per image \(2\), got \[\[1, 1\], "),
        (lambda: predictor.batch_instances(outputs, [(64, 64)]), r"one \(height, width\) per image \(2\)"),
        (lambda: predictor.batch_instances(outputs, None), r"one \(height, width\) per image \(2\), got None"),
        (lambda: predictor.batch_instances(outputs, [(64, 64), (0, 64)]), "positive integers, got \\(0, 64\\)"),
        (lambda: predictor.batch_instances(predictor.run(image), [(64, 64)]), "a batched graph's outputs"),
    ):
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


def test_export_tool_checks_and_times_a_padded_batch_and_refuses_batched_with_onnx(export_tool, batched_export,
                                                                                  tmp_path, capsys):
    output = tmp_path / "again"
    assert export_tool.main(export_tool.parse_args([
        "--config-file", str(TINY_CONFIG), "--output", str(output), "--sample-size", "160", "192", "--batched",
        "--threads", "1", "--benchmark", "96x128", "--warmup", "0", "--repeats", "1", "--batch-size", "3",
    ])) == []
    out = capsys.readouterr().out
    assert "any batch size" in out and "batch of 3 (160x192, 80x96, 160x192)" in out, out
    assert "96x128, 3 images one by one and as a batch" in out, out
    (batches,) = json.loads((output / "benchmark.json").read_text())["batches"]
    assert batches["batch_size"] == 3 and batches["onnxruntime_batched_ms_per_image"] > 0
    with pytest.raises(ValueError, match="--batch-size sets how many images --benchmark times as a batch"):
        export_tool.main(export_tool.parse_args([
            "--config-file", str(TINY_CONFIG), "--output", str(tmp_path / "x"), "--benchmark", "96x128",
            "--batch-size", "2",
        ]))
    with pytest.raises(ValueError, match="--batched is how a graph is exported: drop --onnx"):
        export_tool.main(export_tool.parse_args([
            "--config-file", str(TINY_CONFIG), "--output", str(tmp_path / "x"), "--onnx",
            str(batched_export / "model.onnx"), "--evaluate", "--batched",
        ]))


def test_padding_masks_from_a_sizes_tensor_are_those_from_python_ints():
    sizes = [(5, 7), (3, 7), (5, 2), (1, 1)]
    expected = image_padding_masks((5, 7), sizes, "cpu")
    torch.testing.assert_close(image_padding_masks((5, 7), torch.tensor(sizes), "cpu"), expected)
    batch, tensor_sizes = pad_batch([torch.ones(3, h, w, dtype=torch.uint8) for h, w in sizes])
    assert batch.shape == (4, 3, 5, 7) and tensor_sizes.tolist() == [list(size) for size in sizes]
    assert torch.equal(batch[:, 0] == 0, expected)


def test_graph_takes_image_sizes_within_the_batchs_pixels(batched_export):
    # onnxruntime called directly: a size past the pixels scaled boxes beyond them (a box to x = 320 in a 160-wide
    # batch); 0 or negative gave an image without detections, silently
    import onnxruntime

    session = onnxruntime.InferenceSession(str(batched_export / "model.onnx"), providers=["CPUExecutionProvider"])
    images, _ = pad_batch([item["image"] for item in _items([(128, 160), (128, 160)])])

    def run(sizes):
        return dict(zip([o.name for o in session.get_outputs()],
                        session.run(None, {"images": images.numpy(), "image_sizes": np.array(sizes, np.int64)})))

    expected = run([[128, 160], [1, 1]])
    for sizes in ([[256, 320], [0, 0]], [[129, 999], [-5, 1]]):
        outputs = run(sizes)
        for name in ("boxes", "scores", "nonempty", "focus_token_nums"):
            np.testing.assert_array_equal(outputs[name], expected[name], err_msg=f"{sizes} {name}")
    assert expected["boxes"][0].max() <= 160


def test_padded_images_get_pytorchs_budgets_and_token_choices_up_to_ties(batched_export, parity_fixture):
    # An image of a quarter of the batch's area keeps padding tokens too (the batch's largest budget exceeds its own
    # valid tokens). The graph counts each level's padding as PyTorch does: ONNX's Resize put a coarse level's edge
    # row inside the image, and the budget of a 240x320 image padded to 480x640 was 803 tokens in the graph, 801 in
    # PyTorch, so the graph kept other tokens, which no tie explained.
    from focus_detr.analysis.forced_decisions import ForcedDecisions
    from focus_detr.analysis.parity import Report
    from focus_detr.export import graph_decisions

    model = tiny_model(parity_fixture)
    predictor = OnnxPredictor(str(batched_export / "model.onnx"), num_threads=1, decisions=True)
    for sizes in ([(240, 320), (120, 160)], [(480, 640), (240, 320)], [(250, 330), (100, 90), (61, 77)]):
        items = _items(sizes, seed=11)
        outputs = predictor.run_batch([item["image"] for item in items])
        captured = {}
        selector = model.transformer.foreground_selector
        hook = selector.register_forward_hook(lambda module, inputs, selection: captured.setdefault("s", selection))
        report = Report()
        with torch.no_grad(), ForcedDecisions(model, report, "", **graph_decisions(outputs)):
            model.forward_inference(items, return_token_selection=True)
        hook.remove()
        assert outputs["focus_token_nums"].tolist() == captured["s"].focus_token_nums.tolist(), sizes
        token_sets = [row for row in report.rows if row[0].endswith("foreground tokens")]
        assert token_sets and all(row[3] for row in token_sets), (sizes, report.rows)  # ties at most
        line, ok = compare_with_pytorch(model, predictor, items)
        assert ok, line
