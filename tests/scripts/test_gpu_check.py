"""scripts/gpu_check.sh --dry-run (what a CPU machine can check of the GPU verification) and its report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_FIXTURE = REPO_ROOT.parent / "shared" / "fixtures" / "focus_detr_tiny.pt"
GPU_PLANNED = {"gpu_tests", "msda_cuda", "e2e_cuda_fp32", "e2e_cuda_bf16"}


def _stages(report):
    return {stage["name"]: stage for stage in report["stages"]}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The dry run without a wheel dir, as a clean clone has none: this python's packages, a fresh CPU build."""
    out = tmp_path_factory.mktemp("gpu_check_out")
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TMPDIR": str(out.parent)}
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
    for name in ("imports", "build", "fixture", "gpu_tests_selected", "msda", "parity_r50", "e2e_fp32"):
        assert stages[name]["status"] == "ok", (name, stages[name]["log_tail"])
    assert {name for name, stage in stages.items() if stage["status"] == "planned"} == GPU_PLANNED
    # the build is the fresh one in the scratch copy, not the checkout's
    assert any("backends on cpu" in line and "'cpu'" in line for line in stages["build"]["log_tail"])
    assert not any(str(REPO_ROOT / "projects") in line for line in stages["build"]["log_tail"][-2:])
    assert report["imports"]["missing"] == [] and "detectron2" in report["imports"]["modules"]
    assert report["parity_r50"]["verdict"] == "PARITY OK" and report["parity_r50"]["checks"] > 0
    assert report["msda"] and report["e2e_fp32"]["train"]["median_ms"] > 0
    if TINY_FIXTURE.exists():
        assert stages["parity_tiny"]["status"] == "ok" and report["parity_tiny"]["verdict"] == "PARITY OK"
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
