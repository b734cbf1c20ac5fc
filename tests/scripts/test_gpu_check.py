"""scripts/gpu_check.sh --dry-run (what a CPU machine can check of the GPU verification) and its report."""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_FIXTURE = REPO_ROOT.parent / "shared" / "fixtures" / "focus_detr_tiny.pt"
OFFICIAL_SRC = REPO_ROOT.parent / "shared" / "official"
GPU_PLANNED = {"gpu_tests", "msda_cuda", "e2e_cuda_fp32", "e2e_cuda_bf16", "e2e_cuda_graphs", "profile_cuda", "batch8_cuda", "sbs_cuda_fp32",
               "sbs_cuda_bf16", "sbs_memory_cuda"}


def _checkout_extension_is_current():
    built = REPO_ROOT / "projects/FocusDETR/focus_detr/layers" / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    sources = [REPO_ROOT / "setup.py", *(REPO_ROOT / "projects/FocusDETR/focus_detr/layers/csrc").rglob("*")]
    return built.is_file() and all(source.stat().st_mtime < built.stat().st_mtime for source in sources)


def _stages(report):
    return {stage["name"]: stage for stage in report["stages"]}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The dry run without a wheel dir, as a clean clone has none: this python's packages, a fresh CPU build."""
    out = tmp_path_factory.mktemp("gpu_check_out")
    env = {key: value for key, value in os.environ.items() if key != "MAX_JOBS"}  # the script's own choice is tested
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", TMPDIR=str(out.parent))
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", str(out)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    return result, out


def test_dry_run_runs_every_cpu_stage_and_plans_the_gpu_ones(dry_run):
    result, out = dry_run
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "gpu_report.json").read_text())
    stages = _stages(report)
    assert report["dry_run"] and report["ok"]
    assert stages["wheels"]["status"] == "skipped"
    for name in ("imports", "build", "fixture", "gpu_tests_selected", "msda", "parity_r50", "e2e_fp32", "profile",
                 "batch8"):
        assert stages[name]["status"] == "ok", (name, stages[name]["log_tail"])
    assert {name for name, stage in stages.items() if stage["status"] == "planned"} == GPU_PLANNED
    # the extension is loaded from the scratch copy, not from the checkout
    assert any("backends on cpu" in line and "'cpu'" in line for line in stages["build"]["log_tail"])
    # copied from the checkout when built after its sources changed (make test's set-up builds it), else compiled
    assert ("copied to a scratch copy, not compiled" in stages["build"]["note"]) == _checkout_extension_is_current()
    assert not any(str(REPO_ROOT / "projects") in line for line in stages["build"]["log_tail"][-2:])
    # compiled on every core the machine lends, though the stages' threads were capped by OMP_NUM_THREADS=1
    assert stages["build"]["note"].endswith(f"MAX_JOBS={len(os.sched_getaffinity(0))}")
    assert report["imports"]["missing"] == [] and "detectron2" in report["imports"]["modules"]
    assert report["parity_r50"]["verdict"] == "PARITY OK" and report["parity_r50"]["checks"] > 0
    assert report["msda"] and report["e2e_fp32"]["train"]["median_ms"] > 0
    if TINY_FIXTURE.exists():
        assert stages["parity_tiny"]["status"] == "ok" and report["parity_tiny"]["verdict"] == "PARITY OK"
    # the new stages' small CPU versions: operator counts per precision, a batch of 2, the official model beside ours
    assert report["profile"]["precisions"]["bfloat16"]["operators"] > 0
    assert report["batch8"]["inference"]["batch_size"] == 2 and report["batch8"]["inference"]["images_per_s"] > 0
    if OFFICIAL_SRC.exists():
        for name in ("official_setup", "sbs_fp32", "sbs_memory"):
            assert stages[name]["status"] == "ok", (name, stages[name]["log_tail"])
        assert [row["task"] for row in report["sbs_fp32"]["rows"]] == ["inference"]
        assert report["official_table"][0]["official"] > 0 and report["official_table"][0]["float32_ratio"] > 0
        assert report["official_variant"] == "none (detrex._C is empty)"
    markdown = (out / "gpu_report.md").read_text()
    assert "| gpu_tests | planned |" in markdown and "parity_r50: PARITY OK" in markdown
    assert "===== build: ok" in (out / "gpu_check.log").read_text()


def test_report_records_a_failed_stage_with_its_log(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "stages.tsv").write_text("build\tok\t12\t0\tin place\tpython setup.py\n"
                                     "parity_tiny\tfailed\t3\t1\ton cuda\tpython tools/check_parity.py\n")
    (work / "parity_tiny.log").write_text(
        "image0 max |d pred_boxes|     3.000e-03       <= 0.0001  FAIL\n"
        "image0 max |d pred_logits|    1.000e-06        <= 0.001  ok\nPARITY FAILED\n")
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gpu_report.py"), "--work", str(work), "--out",
                    str(out), "--dry-run", "0", "--total-s", "20", "--budget-s", "450"], check=True)
    report = json.loads((out / "gpu_report.json").read_text())
    assert not report["ok"]
    parity = report["parity_tiny"]
    assert parity["verdict"] == "PARITY FAILED" and parity["failed"] == ["image0 max |d pred_boxes|"]
    assert parity["worst_by_kind"]["pred_boxes"]["value"] == pytest.approx(3e-3)
    markdown = (out / "gpu_report.md").read_text()
    assert "## parity_tiny: failed (exit 1)" in markdown and "PARITY FAILED" in markdown


def test_report_names_each_tasks_precision(tmp_path):
    # tools/benchmark.py --json records the autocast dtype per task; the report must not call a bfloat16 run float32
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "stages.tsv").write_text("e2e_bf16\tok\t20\t0\tR50\tpython tools/benchmark.py --amp\n")
    stats = {"inputs": "synthetic 800x1333", "median_ms": 58.5, "images_per_s": 17.1, "peak_memory_mib": 698}
    (work / "e2e_bf16.json").write_text(json.dumps({
        "config_file": "configs/focus_detr_r50_4scale_12ep.py", "device": "cuda", "inference_amp_dtype": "bfloat16",
        "train_amp_dtype": None, "inference": stats, "train": {**stats, "median_ms": 234.4}}))
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gpu_report.py"), "--work", str(work), "--out",
                    str(out), "--dry-run", "0", "--total-s", "20", "--budget-s", "450"], check=True)
    markdown = (out / "gpu_report.md").read_text()
    assert "- inference (bfloat16): synthetic 800x1333: median 58.50 ms" in markdown
    assert "- train (float32): synthetic 800x1333: median 234.40 ms" in markdown


def _write_issue19_stages(work):
    """Synthetic outputs of the profile, batch-8 and side-by-side stages, as the tools print and write them."""
    names = ("e2e_fp32", "e2e_bf16", "e2e_graphs", "profile", "batch8", "official_setup", "sbs_fp32", "sbs_bf16",
             "sbs_memory")
    (work / "stages.tsv").write_text("".join(f"{name}\tok\t9\t0\tnote\tcommand\n" for name in names))
    for name, dtype, infer_ms, train_ms in (("e2e_fp32", None, 38.5, 250.0), ("e2e_bf16", "bfloat16", 58.5, 234.0)):
        (work / f"{name}.json").write_text(json.dumps({
            "inference_amp_dtype": dtype, "train_amp_dtype": dtype,
            "inference": {"median_ms": infer_ms, "peak_memory_mib": 700.0},
            "train": {"median_ms": train_ms, "peak_memory_mib": 5000.0}}))

    (work / "e2e_graphs.json").write_text(json.dumps({"inference_amp_dtype": "bfloat16", "inference": {
        "median_ms": 10.5, "fp32_ms": 17.0, "eager_ms": 30.0, "ratio_to_eager": 0.35}}))

    def profiled(busy, syncs):
        return {"busy_fraction": busy, "device_active_ms": 15.9, "kernels": 1830, "launches": 1831, "syncs": syncs,
                "copies": {"HtoD": 40, "DtoH": 6, "DtoD": 3}, "operators": 3104, "casts": 630,
                "top_kernels": [{"name": "sm90_gemm", "launches": 12, "ms": 2.5}]}

    (work / "profile.json").write_text(json.dumps({"precisions": {
        "float32": profiled(0.41, 16), "bfloat16": profiled(0.16, 16), "float32+graphs": profiled(0.93, 1)}}))
    (work / "batch8.json").write_text(json.dumps({"inference_amp_dtype": "bfloat16", "inference": {
        "batch_size": 8, "images_per_s": 120.0, "fp32_images_per_s": 70.0}}))
    (work / "official_setup.log").write_text("detrex._C built\nPYTHONPATH=/w/official:/w/official/_stubs\n")
    warning = "/x/detrex/layers/dcn_v3.py:23: FutureWarning: deprecated\n"
    (work / "sbs_fp32.log").write_text(warning + "\n".join(json.dumps(row) for row in (
        {"device": "cuda", "params_official": 1, "params_ours": 1, "ours_amp": False},
        {"size": "800x1333", "task": "inference", "official_s": 0.05, "ours_s": 0.04, "ratio_median": 0.8},
        {"size": "800x1333", "task": "train", "official_s": 0.3, "ours_s": 0.15, "ratio_median": 0.5})) + "\n")
    (work / "sbs_bf16.log").write_text("\n".join(json.dumps(row) for row in (
        {"device": "cuda", "params_official": 1, "params_ours": 1, "ours_amp": True},
        {"size": "800x1333", "task": "inference", "official_s": 0.052, "ours_s": 0.06, "ratio_median": 1.2})) + "\n")
    (work / "sbs_memory.log").write_text("\n".join(json.dumps(row) for row in (
        {"device": "cuda", "size": "800x1333", "official_attention": "detrex._C (compiled CUDA op)"},
        {"model": "official", "precision": "float32", "task": "inference", "size": "800x1333", "peak_mib": 400.0},
        {"model": "ours", "precision": "float32", "task": "inference", "peak_mib": 300.0},
        {"model": "ours", "precision": "bfloat16", "task": "inference", "peak_mib": 200.0})) + "\n")


def test_report_tables_ours_on_the_gpu_and_against_the_official_model(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    _write_issue19_stages(work)
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gpu_report.py"), "--work", str(work), "--out",
                    str(out), "--dry-run", "0", "--total-s", "300", "--budget-s", "450"], check=True)
    report = json.loads((out / "gpu_report.json").read_text())
    rows = {row["figure"]: row for row in report["gpu_table"]}
    assert rows["inference latency, batch 1 (ms)"]["float32"] == 38.5
    assert rows["training step, batch 2 (ms)"]["bfloat16"] == 234.0
    assert rows["GPU busy fraction, inference"]["float32"] == 0.41
    graphs = rows["inference latency from CUDA graphs, batch 1 (ms)"]
    assert (graphs["float32"], graphs["bfloat16"]) == (17.0, 10.5)
    assert rows["CUDA graphs / eager, interleaved"]["bfloat16"] == 0.35
    busy = rows["GPU busy fraction, inference from CUDA graphs"]
    assert (busy["float32"], busy["bfloat16"]) == (0.93, None)
    assert rows["host<->device copies per image"]["bfloat16"] == 46  # HtoD + DtoH, not DtoD
    assert rows["synchronisations per image"]["float32"] == 16
    assert rows["throughput, batch 8 (images/s)"] == {
        "figure": "throughput, batch 8 (images/s)", "float32": 70.0, "bfloat16": 120.0, "goal": ">= 150 (bfloat16)"}
    official = {row["figure"]: row for row in report["official_table"]}
    inference = official["inference, batch 1 (ms)"]
    # the float32 run's official time is the reference; each run's own ratio is kept
    assert inference["official"] == pytest.approx(50) and inference["float32"] == pytest.approx(40)
    assert inference["float32_ratio"] == 0.8 and inference["bfloat16_ratio"] == 1.2
    train = official["training step, batch 1, no optimizer (ms)"]
    assert train["float32"] == pytest.approx(150) and train.get("bfloat16") is None
    memory = official["inference peak memory (MiB)"]
    assert (memory["official"], memory["float32_ratio"], memory["bfloat16_ratio"]) == (400.0, 0.75, 0.5)
    assert report["official_variant"] == "detrex._C (compiled CUDA op)"
    markdown = (out / "gpu_report.md").read_text()
    assert "| GPU busy fraction, inference | 0.41 | 0.16 | >= 0.85 |" in markdown
    assert "| CUDA graphs / eager, interleaved | - | 0.35 | - |" in markdown
    assert "| inference, batch 1 (ms) | 50.0 | 40.0 | 0.80 | 60.0 | 1.20 |" in markdown
    assert "interleaved, R50 800x1333, random weights; official attention: detrex._C (compiled CUDA op)" in markdown
    assert "sm90_gemm 2.50 ms (12x)" in markdown
