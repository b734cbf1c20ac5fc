"""analyze_model.py, benchmark.py, sweep_keep_ratio.py and demo.py on the tiny Focus-DETR."""
import csv
import json
import os

import pytest

from tools_test_utils import FIXTURE_CONFIG, TINY_TOY_CONFIG, load_script, toy_dataset  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def analyze_model():
    return load_script("tools/analyze_model.py", "analyze_model")


def test_flop_rows_sum_to_total_and_msda_is_counted(analyze_model, tmp_path, capsys):
    json_path = tmp_path / "flops.json"
    analyze_model.main(analyze_model.parse_args(
        ["--config-file", FIXTURE_CONFIG, "--tasks", "flop", "activation", "--input-size", "96", "128", "--json", str(json_path)]
    ))
    result = json.loads(json_path.read_text())
    assert result["total_gflops"] > 0
    assert sum(result["per_module"].values()) == pytest.approx(result["total_gflops"], rel=1e-9)
    assert result["flop"]["per_operator"]["ms_deform_attn"] > 0
    assert result["flop"]["per_operator"]["attention"] > 0  # the fine-grained self-attention
    assert result["unsupported_ops"] == {}
    for row in ("backbone", "neck", "foreground selector", "encoder", "decoder", "heads"):
        assert result["per_module"][row] > 0, row
    # the dense (all keep ratios 1.0) encoder does more work; the rest of the model does not change
    assert result["dense_total_gflops"] > result["total_gflops"]
    assert result["flop"]["dense_per_module"]["encoder"] > result["per_module"]["encoder"]
    assert result["flop"]["dense_per_module"]["backbone"] == result["per_module"]["backbone"]
    assert result["activation"]["mean_mactivations"] > 0
    # the deformable and fine-grained attention were left out of the activations without a word; what the count
    # leaves out (normalisations, pooling, interpolation) is named
    uncounted = result["activation"]["uncounted_ops"]
    assert "aten::layer_norm" in uncounted and "aten::group_norm" in uncounted
    assert not {"focus_detr::ms_deform_attn", "aten::scaled_dot_product_attention", "aten::add"} & set(uncounted)
    printed = capsys.readouterr().out
    assert "not counted: " in printed and "aten::layer_norm x" in printed
    assert "total" in printed and "dense GFLOPs" in printed and "unsupported ops: none" in printed


def test_flops_average_over_dataset_images(analyze_model, toy_dataset, tmp_path):
    result = analyze_model.main(analyze_model.parse_args(
        ["--config-file", TINY_TOY_CONFIG, "--tasks", "flop", "parameter", "-n", "2", "--no-dense"]
    ))
    assert result["flop"]["num_inputs"] == 2
    assert "first 2 images of focus_detr_toy" in result["inputs"]
    assert "dense_total_gflops" not in result["flop"]
    assert result["parameter"]["total"] == sum(result["parameter"]["per_module"].values())


def test_benchmark_reports_latency_training_and_memory(tmp_path, capsys):
    benchmark = load_script("tools/benchmark.py", "benchmark")
    json_path = tmp_path / "bench.json"
    benchmark.main(benchmark.parse_args(
        ["--config-file", FIXTURE_CONFIG, "--device", "cpu", "--input-size", "64", "96", "--warmup", "0",
         "--repeats", "1", "--json", str(json_path)]
    ))
    result = json.loads(json_path.read_text())
    for task in ("inference", "train"):
        assert {"median_ms", "images_per_s", "peak_memory_mib", "yardstick_ms", "ratio_to_yardstick"} <= result[task].keys()
    assert result["inference_s"] == result["inference"]["median_ms"] / 1000
    assert result["train_step_s"] == result["train"]["median_ms"] / 1000
    assert result["yardstick_s"] > 0 and result["inference"]["yardstick_inputs"] == [[64, 96]]
    # one round: the ratio is exactly model / yardstick of that round
    assert result["ratio_to_yardstick"] == pytest.approx(result["inference"]["median_ms"] / result["inference"]["yardstick_ms"])
    assert result["train_ratio_to_yardstick"] == result["train"]["ratio_to_yardstick"] > 0
    assert result["peak_rss_mib"] == max(result[task]["peak_memory_mib"] for task in ("inference", "train")) > 0
    out = capsys.readouterr().out
    assert "median ms" in out and "x yardstick" in out
    # counting is opt-in: without --flop-floor the headline keys say it was not done
    assert result["flop_ratio_to_yardstick"] is None and "gmac" not in result["inference"]


def test_benchmark_flop_floor_counts_each_task_against_the_yardstick(tmp_path, capsys):
    benchmark = load_script("tools/benchmark.py", "benchmark")
    json_path = tmp_path / "bench.json"
    benchmark.main(benchmark.parse_args(
        ["--config-file", FIXTURE_CONFIG, "--device", "cpu", "--input-size", "64", "96", "--warmup", "0",
         "--repeats", "1", "--flop-floor", "--json", str(json_path)]
    ))
    result = json.loads(json_path.read_text())
    inference, train = result["inference"], result["train"]
    # the yardstick: torchvision's resnet50 at 64x96, its convolutions and its classifier
    assert inference["yardstick_gmac"] == train["yardstick_gmac"] == pytest.approx(0.50251, rel=1e-4)
    assert result["flop_ratio_to_yardstick"] == inference["flop_ratio"] == pytest.approx(
        inference["gmac"] / inference["yardstick_gmac"])
    # a training step is its forward plus a backward of about twice that
    assert 2.0 * inference["gmac"] < train["gmac"] < 3.5 * inference["gmac"]
    assert result["train_flop_ratio_to_yardstick"] == train["flop_ratio"]
    assert "GMAC in convolutions, matrix products and attention" in capsys.readouterr().out


def test_sweep_writes_csv_and_plot_in_keep_ratio_order(toy_dataset, tmp_path, capfd):
    sweep = load_script("tools/sweep_keep_ratio.py", "sweep_keep_ratio")
    sweep.main(sweep.parse_args(
        ["--config-file", TINY_TOY_CONFIG, "--output", str(tmp_path), "--keep-ratios", "0.5", "0.3", "--no-dense",
         "--flop-images", "1", "--latency-images", "1", "--latency-warmup", "0"]
    ))
    with open(tmp_path / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["setting"] for row in rows] == ["keep 0.3", "keep 0.5"]  # the dense point: tests/analysis
    assert rows[0]["cascade_keep_ratios"] == rows[1]["cascade_keep_ratios"] == "1 0.8"
    assert float(rows[0]["gflops"]) < float(rows[1]["gflops"])
    assert all(row["AP"] != "" and float(row["latency_ms"]) > 0 and row["latency_repeats"] == "5" for row in rows)
    assert all(row["latency_vs_dense"] == "" for row in rows)  # no dense point to divide by
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    capfd.readouterr()
    argv = ["--config-file", TINY_TOY_CONFIG, "--output", str(tmp_path / "x"), "--latency-repeats", "3"]
    assert sweep.run_reporting_errors(sweep.main, sweep.parse_args(argv)) == 2
    assert capfd.readouterr().err.strip() == "error: --latency-repeats must be at least 5 (its median is the latency), got 3"
    argv = ["--config-file", TINY_TOY_CONFIG, "--output", str(tmp_path / "x"), "--flop-images", "0"]
    assert sweep.run_reporting_errors(sweep.main, sweep.parse_args(argv)) == 2
    assert capfd.readouterr().err.strip() == "error: --flop-images must be at least 1, got 0"
    # AP against cost is what it is for: without an evaluator it wrote rows of AP nan after all the settings ran
    argv = ["--config-file", TINY_TOY_CONFIG, "--output", str(tmp_path / "x"), "dataloader.evaluator=null"]
    assert sweep.run_reporting_errors(sweep.main, sweep.parse_args(argv)) == 2
    assert capfd.readouterr().err.strip() == (
        "error: the sweep (AP against GFLOPs and latency) needs dataloader.evaluator, and the config has none: "
        "nothing would score the detections; leave out the override dataloader.evaluator=null (or give the config an "
        "evaluator)")
    assert not (tmp_path / "x").exists()  # before any work
    blocker = tmp_path / "sweep.csv"  # a file where the output folder should be
    argv = ["--config-file", TINY_TOY_CONFIG, "--output", str(blocker)]
    assert sweep.run_reporting_errors(sweep.main, sweep.parse_args(argv)) == 2
    assert capfd.readouterr().err.strip() == f"error: --output {blocker} cannot be created: {blocker} is a file, not a folder"


def test_demo_writes_detection_and_token_pictures(toy_dataset, tmp_path):
    from detectron2.data import DatasetCatalog

    demo = load_script("demo/demo.py", "demo")
    image = DatasetCatalog.get(toy_dataset)[0]["file_name"]
    written = demo.main(demo.parse_args(
        ["--config-file", TINY_TOY_CONFIG, "--input", image, "--output", str(tmp_path), "--show-tokens"]
    ))
    assert sorted(os.path.basename(p) for p in written) == ["toy_000_detections.png", "toy_000_foreground.png", "toy_000_tokens.png"]
    from PIL import Image

    sizes = {}
    for path in written:
        with Image.open(path) as picture:
            assert picture.format == "PNG"
            sizes[os.path.basename(path)] = picture.size
    width, height = sizes["toy_000_detections.png"]  # the original 64 x 48 image scaled by 15 (short edge >= 720)
    assert width == 64 * 15 and 48 * 15 < height < 48 * 15 + 100  # and the legend under it
    assert sizes["toy_000_tokens.png"][0] > 200


def test_demo_names_an_unreadable_image(toy_dataset, tmp_path, capsys):
    from focus_detr.engine.cli import run_reporting_errors

    demo = load_script("demo/demo.py", "demo")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"no image here")
    code = run_reporting_errors(demo.main, demo.parse_args(
        ["--config-file", TINY_TOY_CONFIG, "--input", str(broken), "--output", str(tmp_path)]
    ))
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"skipped {broken}: not an image (Pillow does not recognise its format)",
        "error: no image to draw: all 1 inputs were skipped (each is named above)",
    ]


def test_counting_and_benchmarking_read_no_weights(analyze_model, toy_dataset, tmp_path):
    """FLOPs, parameters and speed do not depend on the weights' values: an unreachable train.init_checkpoint (the
    R50 configs name a URL) must not stop them."""
    missing = f"train.init_checkpoint={tmp_path / 'not_downloaded.pkl'}"
    result = analyze_model.main(analyze_model.parse_args(
        ["--config-file", TINY_TOY_CONFIG, "--tasks", "flop", "parameter", "--input-size", "64", "96", "--no-dense", missing]
    ))
    assert result["flop"]["total_gflops"] > 0 and result["parameter"]["total"] > 0
    benchmark = load_script("tools/benchmark.py", "benchmark")
    result = benchmark.main(benchmark.parse_args(
        ["--config-file", TINY_TOY_CONFIG, "--device", "cpu", "--tasks", "inference", "--input-size", "64", "96",
         "--warmup", "0", "--repeats", "1", missing]
    ))
    assert result["inference"]["median_ms"] > 0


def test_tool_arguments_that_cannot_work_are_refused_before_any_work(analyze_model, tmp_path, capsys):
    from focus_detr.engine.cli import run_reporting_errors

    benchmark = load_script("tools/benchmark.py", "benchmark")
    for argv, message in (
        (["--train-boxes", "-1"], "--train-boxes must be at least 0, got -1"),
        (["--train-batch-size", "0"], "--train-batch-size must be at least 1, got 0"),
        (["--threads", "-2"], "--threads must be at least 0, got -2"),
        # no float32 line appeared, and nothing said why
        (["--compare-fp32"], "--compare-fp32 times autocast against float32, and nothing runs in autocast: add --amp "
                             "(or train.inference_amp.enabled=True / train.amp.enabled=True)"),
    ):
        args = benchmark.parse_args(["--config-file", str(FIXTURE_CONFIG), "--tasks", "train", *argv])
        assert run_reporting_errors(benchmark.main, args) == 2
        assert capsys.readouterr().err.strip() == f"error: {message}"
    # the folder of --json is checked before the counting (a file stands where the folder should be)
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = analyze_model.parse_args(["--config-file", str(FIXTURE_CONFIG), "--input-size", "32", "32",
                                     "--json", str(blocker / "x.json")])
    assert run_reporting_errors(analyze_model.main, args) == 2
    err = capsys.readouterr()
    assert err.err.strip().startswith(f"error: the folder of --json {blocker} cannot be created") and not err.out
    # a folder as --json was refused only after the whole table was printed
    for tool, argv in ((analyze_model, ["--input-size", "32", "32"]), (benchmark, ["--tasks", "inference"])):
        args = tool.parse_args(["--config-file", str(FIXTURE_CONFIG), *argv, "--json", str(tmp_path)])
        assert run_reporting_errors(tool.main, args) == 2
        err = capsys.readouterr()
        assert err.err.strip() == f"error: --json {tmp_path} is a folder: give a file name, e.g. {tmp_path}/report.json"
        assert not err.out


def test_a_json_report_never_replaces_the_config_it_was_given(analyze_model, tmp_path, capsys):
    # --json naming the config file wrote the report over it, exit 0
    from focus_detr.engine.cli import run_reporting_errors

    config = tmp_path / "config.py"
    config.write_text(f"from detectron2.config import LazyConfig\n_base = LazyConfig.load({str(FIXTURE_CONFIG)!r})\n"
                      "model = _base.model\n")
    text = config.read_text()
    tools = (analyze_model, load_script("tools/benchmark.py", "benchmark"),
             load_script("tools/profile_inference.py", "profile_inference"))
    for tool in tools:
        args = tool.parse_args(["--config-file", str(config), "--json", str(config)])
        assert run_reporting_errors(tool.main, args) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: --json {config} is the --config-file file: the output would replace it; name another file")
        assert config.read_text() == text


def test_settings_a_tool_would_ignore_are_refused(analyze_model, capsys):
    from focus_detr.engine.cli import run_reporting_errors

    # -n was ignored beside --input-size: one synthetic image counted
    with pytest.raises(SystemExit):
        analyze_model.parse_args(["--config-file", str(FIXTURE_CONFIG), "-n", "5", "--input-size", "32", "32"])
    assert capsys.readouterr().err.strip().endswith(
        "error: give --num-inputs (dataset images) or --input-size (one synthetic image), not both")
    assert analyze_model.parse_args(["--config-file", str(FIXTURE_CONFIG)]).num_inputs == 100
    # a precision named twice was profiled once
    profile = load_script("tools/profile_inference.py", "profile_inference")
    args = profile.parse_args(["--config-file", str(FIXTURE_CONFIG), "--precision", "float32", "float32"])
    assert run_reporting_errors(profile.main, args) == 2
    assert capsys.readouterr().err.strip() == "error: --precision names a precision twice: float32 float32"


def test_benchmark_times_the_training_loader_beside_the_training_step(tmp_path, capsys):
    benchmark = load_script("tools/benchmark.py", "benchmark")
    tree_config = os.path.join(os.path.dirname(FIXTURE_CONFIG), "..", "focus_detr_r18_trees.py")
    result = benchmark.main(benchmark.parse_args(
        ["--config-file", tree_config, "--device", "cpu", "--tasks", "train", "data", "--input-size", "64", "64",
         "--warmup", "0", "--repeats", "3", "dataloader.train.num_workers=0"]
    ))
    data = result["data"]
    assert data["batch_size"] == 2 and data["inputs"] == "dataloader.train, 0 workers"
    # from the median (of 3: not the mean), as the training step's rate it is compared with (it was the mean's)
    assert data["images_per_s"] == pytest.approx(2 / (data["median_ms"] / 1000))
    out = capsys.readouterr().out
    assert "data loading (dataloader.train, 0 workers): median" in out
    assert "the loader keeps up with the training step" in out or "the loader is slower than" in out
