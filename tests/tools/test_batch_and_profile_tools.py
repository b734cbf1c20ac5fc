"""benchmark.py --batch-size (images per inference call) and profile_inference.py on the tiny Focus-DETR, CPU."""
import json

import pytest
import torch

from tools_test_utils import FIXTURE_CONFIG, load_script


def test_benchmark_batch_size_runs_batches_and_counts_images(tmp_path, monkeypatch):
    benchmark = load_script("tools/benchmark.py", "benchmark_batch")
    calls = []
    build_model = benchmark.build_model

    def spied_build_model(cfg, device):
        model = build_model(cfg, device)
        model.register_forward_pre_hook(lambda module, args: calls.append([tuple(x["image"].shape) for x in args[0]]))
        return model

    monkeypatch.setattr(benchmark, "build_model", spied_build_model)
    results = {}
    for batch_size in (3, 1):
        json_path = tmp_path / f"bench{batch_size}.json"
        benchmark.main(benchmark.parse_args(
            ["--config-file", FIXTURE_CONFIG, "--device", "cpu", "--input-size", "64", "96", "--batch-size",
             str(batch_size), "--tasks", "inference", "--warmup", "0", "--repeats", "2", "--flop-floor",
             "--json", str(json_path)]))
        results[batch_size] = json.loads(json_path.read_text())["inference"]
        if batch_size == 3:
            assert calls[:2] == [[(3, 64, 96)] * 3] * 2  # the two timed calls
    inference = results[3]
    assert inference["batch_size"] == 3
    assert inference["images_per_s"] == pytest.approx(3000 / inference["median_ms"])
    # the multiply-adds of the timed call, all three images: its time ratio to the yardstick compares with this
    # (it counted one image, so the model looked three times slower per multiply-add)
    assert inference["gmac"] == pytest.approx(3 * results[1]["gmac"], rel=1e-9)


def test_benchmark_refuses_an_empty_batch_and_cuda_graphs_off_a_gpu(capsys):
    benchmark = load_script("tools/benchmark.py", "benchmark_batch")
    with pytest.raises(ValueError, match="--batch-size must be at least 1, got 0"):
        benchmark.main(benchmark.parse_args(["--config-file", FIXTURE_CONFIG, "--device", "cpu", "--batch-size", "0"]))
    with pytest.raises(ValueError, match="--cuda-graphs needs a CUDA device, got --device cpu"):
        benchmark.main(benchmark.parse_args(["--config-file", FIXTURE_CONFIG, "--device", "cpu", "--cuda-graphs"]))


def test_benchmark_cuda_graphs_times_replays_against_eager(tmp_path, monkeypatch, stand_in_cuda_graphs):
    benchmark = load_script("tools/benchmark.py", "benchmark_graphs")
    monkeypatch.setattr(benchmark, "graphs_available", lambda device: True)  # the stand-in graphs run on the CPU
    json_path = tmp_path / "bench.json"
    benchmark.main(benchmark.parse_args(
        ["--config-file", FIXTURE_CONFIG, "--device", "cpu", "--input-size", "64", "96", "--tasks", "inference",
         "--cuda-graphs", "--warmup", "2", "--repeats", "2", "--json", str(json_path)]))
    inference = json.loads(json_path.read_text())["inference"]
    assert inference["cuda_graphs"] == {"eager": 1, "captured": 1, "replayed": 2}  # captured in the warm-up
    assert inference["eager_ms"] > 0 and inference["ratio_to_eager"] > 0
    assert stand_in_cuda_graphs.captures == 1


def test_profile_inference_writes_per_precision_counts(tmp_path, capsys):
    profile = load_script("tools/profile_inference.py", "profile_inference")
    json_path = tmp_path / "profile.json"
    profile.main(profile.parse_args(
        ["--config-file", FIXTURE_CONFIG, "--device", "cpu", "--input-size", "64", "96", "--precision", "float32",
         "bfloat16", "--warmup", "0", "--repeats", "1", "--profiled", "1", "--json", str(json_path)]))
    result = json.loads(json_path.read_text())
    assert list(result["precisions"]) == ["float32", "bfloat16"]
    float32, bfloat16 = result["precisions"]["float32"], result["precisions"]["bfloat16"]
    assert float32["operators"] > 100 and float32["wall_ms"] > 0
    assert bfloat16["casts"] > float32["casts"]  # autocast adds casts
    # no device on a CPU: no kernels, no busy fraction
    assert float32["kernels"] == 0 and float32["busy_fraction"] is None
    assert "busy" in capsys.readouterr().out


def test_profile_inference_takes_threads_and_checks_its_json_before_profiling(tmp_path, monkeypatch):
    profile = load_script("tools/profile_inference.py", "profile_inference_checks")
    monkeypatch.setattr(profile, "profile_summary", lambda *a, **k: pytest.fail("profiled before --json was checked"))
    threads = torch.get_num_threads()
    try:
        with pytest.raises(IsADirectoryError, match=r"^--json .* is a folder"):
            profile.main(profile.parse_args(["--config-file", FIXTURE_CONFIG, "--device", "cpu", "--threads", "1",
                                             "--json", str(tmp_path)]))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
