#!/usr/bin/env python
"""Writes gpu_report.json, gpu_report.md and gpu_check.log from the work dir of scripts/gpu_check.sh.

    python scripts/gpu_report.py --work WORK --out OUT --dry-run 0|1 --total-s S --budget-s S

Reads WORK/stages.tsv (one line per stage: name, status, seconds, exit code, note, command), WORK/environment.json,
each stage's WORK/<name>.log, the JSON the tools wrote (msda.json, e2e_fp32.json, e2e_bf16.json, e2e_graphs.json,
profile.json, batch8.json) and the JSON lines of the side-by-side stages' logs (sbs_fp32, sbs_bf16, sbs_memory).
Two tables sum them up: ours on the GPU, float32 and bfloat16 (eager and from CUDA graphs), against issue 19's
goals; and ours against the official model.
Standard library only: it runs whatever failed before it.
"""
import argparse
import json
import re
from pathlib import Path

PARITY_COLUMNS = re.compile(r"\s{2,}")  # check_parity's table: check, value, tolerance, result (ok|FAIL)
PARITY_KINDS = ("pred_logits", "pred_boxes", "score", "loss")
PYTEST_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")
LOG_TAIL_LINES = 25
SIDE_BY_SIDE_STAGES = ("sbs_fp32", "sbs_bf16")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--dry-run", type=int, choices=(0, 1), required=True)
    parser.add_argument("--total-s", type=int, required=True)
    parser.add_argument("--budget-s", type=int, required=True)
    return parser.parse_args(argv)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_log(work: Path, name: str) -> str:
    path = work / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def read_stages(work: Path):
    stages = []
    for line in (work / "stages.tsv").read_text().splitlines():
        name, status, seconds, rc, note, command = (line.split("\t") + [""] * 6)[:6]
        log = read_log(work, name)
        stages.append({
            "name": name, "status": status, "seconds": int(seconds or 0), "exit_code": int(rc) if rc else None,
            "note": note, "command": command, "log_tail": log.splitlines()[-LOG_TAIL_LINES:],
        })
    return stages


def pytest_summary(log: str):
    lines = [line for line in log.splitlines() if PYTEST_SUMMARY.search(line) and (" in " in line or "==" in line)]
    if not lines:
        return None
    counts = {kind: int(n) for n, kind in PYTEST_SUMMARY.findall(lines[-1])}
    return {"line": lines[-1].strip("= "), **counts}


def parity_summary(log: str):
    rows = [parts for parts in (PARITY_COLUMNS.split(line.strip()) for line in log.splitlines())
            if len(parts) == 4 and parts[3] in ("ok", "FAIL")]
    verdicts = [line for line in log.splitlines() if line.startswith("PARITY ")]
    backends = [line for line in log.splitlines() if line.startswith("deformable attention backend")]
    worst = {}
    for name, value, tolerance, result in rows:
        kind = next((k for k in PARITY_KINDS if k in name), "other")
        try:
            number = float(value)
        except ValueError:
            continue
        if kind not in worst or number > worst[kind]["value"]:
            worst[kind] = {"value": number, "tolerance": tolerance, "check": name}
    return {
        "verdict": verdicts[-1] if verdicts else None,
        "backend": backends[-1].split(":", 1)[1].split("(")[0].strip() if backends else None,
        "checks": len(rows),
        "failed": [name for name, _, _, result in rows if result == "FAIL"],
        "worst_by_kind": worst,
    }


def msda_summary(rows):
    """Kernel vs PyTorch op per (dtype, case, batch)."""
    if not rows:
        return None
    table = []
    for row in rows:
        if row["backend"] == "pytorch":
            continue
        entry = {k: row.get(k) for k in ("dtype", "case", "batch", "queries", "backend", "forward_ms",
                                         "forward_speedup", "forward_backward_ms", "forward_backward_speedup",
                                         "forward_peak_mb", "forward_backward_peak_mb")}
        reference = [r for r in rows if r["backend"] == "pytorch" and
                     (r["dtype"], r["case"], r["batch"]) == (row["dtype"], row["case"], row["batch"])]
        if reference:
            entry["reference_forward_ms"] = reference[0]["forward_ms"]
            entry["reference_forward_backward_ms"] = reference[0].get("forward_backward_ms")
        table.append(entry)
    return table


def json_lines(log: str):
    """The JSON objects printed one per line in a log (other lines, e.g. warnings, skipped)."""
    rows = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


def side_by_side_summary(log: str):
    """side_by_side.py's lines: the header (device, parameters, ours_amp) and one row per size and task."""
    rows = json_lines(log)
    if not rows:
        return None
    return {"header": next((r for r in rows if "task" not in r), None), "rows": [r for r in rows if "task" in r]}


def official_variant(report, setup_log: str):
    """Which deformable attention the official model ran: side_by_side_memory.py's check, else setup's words."""
    memory = report.get("sbs_memory") or {}
    if (memory.get("header") or {}).get("official_attention"):
        return memory["header"]["official_attention"]
    for line in setup_log.splitlines():
        if "detrex._C built" in line:
            return "detrex._C (compiled CUDA op), by setup_official.sh"
        if "did not build" in line:
            return "none: detrex._C did not build (setup_official.sh)"
    return None


def _get(mapping, *keys):
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _copies(summary):
    copies = _get(summary, "copies")
    return None if copies is None else copies.get("HtoD", 0) + copies.get("DtoH", 0)


def gpu_table(report):
    """Ours on the GPU, float32 and bfloat16, per figure, with issue 19's goal: rows of
    ``{"figure", "float32", "bfloat16", "goal"}`` (None where a stage did not run)."""
    e2e = {"float32": report.get("e2e_fp32"), "bfloat16": report.get("e2e_bf16")}
    profile = {p: _get(report, "profile", "precisions", p) for p in ("float32", "bfloat16")}
    batch = report.get("batch8") or {}
    graphs = report.get("e2e_graphs") or {}
    graphs_bf16 = bool(graphs.get("inference_amp_dtype"))
    graphs_profile = {p: _get(report, "profile", "precisions", f"{p}+graphs") for p in ("float32", "bfloat16")}
    rows = [
        ("inference latency, batch 1 (ms)", {p: _get(e2e[p], "inference", "median_ms") for p in e2e},
         "<= 20 / <= 12"),
        ("training step, batch 2 (ms)", {p: _get(e2e[p], "train", "median_ms") for p in e2e}, "<= 160 / <= 110"),
        ("inference peak memory (MiB)", {p: _get(e2e[p], "inference", "peak_memory_mib") for p in e2e}, "-"),
        ("training peak memory (MiB)", {p: _get(e2e[p], "train", "peak_memory_mib") for p in e2e}, "must not rise"),
        ("inference latency from CUDA graphs, batch 1 (ms)",
         {"float32": _get(graphs, "inference", "fp32_ms" if graphs_bf16 else "median_ms"),
          "bfloat16": _get(graphs, "inference", "median_ms") if graphs_bf16 else None}, "<= 20 / <= 12"),
        ("CUDA graphs / eager, interleaved",
         {"float32" if not graphs_bf16 else "bfloat16": _get(graphs, "inference", "ratio_to_eager")}, "-"),
        ("GPU busy fraction, inference", {p: _get(profile[p], "busy_fraction") for p in profile}, ">= 0.85"),
        ("GPU busy fraction, inference from CUDA graphs",
         {p: _get(graphs_profile[p], "busy_fraction") for p in graphs_profile}, ">= 0.85"),
        ("device time per image (ms)", {p: _get(profile[p], "device_active_ms") for p in profile}, "-"),
        ("kernels per image", {p: _get(profile[p], "kernels") for p in profile}, "-"),
        ("kernel launches per image", {p: _get(profile[p], "launches") for p in profile}, "-"),
        ("host<->device copies per image", {p: _copies(profile[p]) for p in profile}, "-"),
        ("synchronisations per image", {p: _get(profile[p], "syncs") for p in profile}, "0"),
        ("operators per image", {p: _get(profile[p], "operators") for p in profile}, "-"),
        ("casts per image", {p: _get(profile[p], "casts") for p in profile}, "-"),
        (f"throughput, batch {_get(batch, 'inference', 'batch_size') or 8} (images/s)",
         {"float32": _get(batch, "inference", "fp32_images_per_s"),
          "bfloat16": _get(batch, "inference", "images_per_s") if batch.get("inference_amp_dtype") else None},
         ">= 150 (bfloat16)"),
    ]
    return [{"figure": figure, **values, "goal": goal} for figure, values, goal in rows]


def official_table(report):
    """Ours against the official model, one row per figure: the official model's value (float32), ours in float32
    and under bfloat16 autocast, and the ratios ours / official (times: median of per-round ratios)."""
    runs = {"float32": report.get("sbs_fp32"), "bfloat16": report.get("sbs_bf16")}
    memory = _get(report, "sbs_memory", "rows") or []
    rows = []
    for task, label in (("inference", "inference, batch 1 (ms)"), ("train", "training step, batch 1, no optimizer (ms)")):
        row = {"figure": label, "official": None}
        for precision, run in runs.items():
            found = [r for r in (run or {}).get("rows", []) if r.get("task") == task]
            if found:
                # each run times the official model again: its float32 run is the reference column
                if precision == "float32" or row["official"] is None:
                    row["official"] = found[0]["official_s"] * 1000
                row[precision] = found[0]["ours_s"] * 1000
                row[f"{precision}_ratio"] = found[0]["ratio_median"]
        rows.append(row)
    for task, label in (("inference", "inference peak memory (MiB)"), ("train", "training step peak memory (MiB)")):
        values = {(r["model"], r["precision"]): r.get("peak_mib") for r in memory if r.get("task") == task}
        official = values.get(("official", "float32"))
        row = {"figure": label, "official": official}
        for precision in ("float32", "bfloat16"):
            ours = values.get(("ours", precision))
            row[precision] = ours
            row[f"{precision}_ratio"] = ours / official if ours is not None and official else None
        rows.append(row)
    return rows


def fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def markdown(report) -> str:
    env = report["environment"] or {}
    lines = [f"# GPU check{' (dry run)' if report['dry_run'] else ''}", ""]
    lines.append(f"{env.get('gpu', 'no GPU')}; python {env.get('python')}, torch {env.get('torch')} "
                 f"(CUDA {env.get('torch_cuda')}), nvcc: {env.get('nvcc')}, driver {env.get('driver')}, "
                 f"{env.get('cpu_cores')} cores. Total {report['total_s']} s of a {report['budget_s']} s budget.")
    lines += ["", "| stage | status | s | note |", "| --- | --- | --- | --- |"]
    for s in report["stages"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {s['note']} |")
    if report.get("gpu_tests"):
        lines += ["", f"GPU tests: {report['gpu_tests']['line']}"]
    for name in ("parity_tiny", "parity_r50"):
        parity = report.get(name)
        if parity:
            worst = ", ".join(f"{k} {v['value']:.1e} (tol {v['tolerance']})" for k, v in parity["worst_by_kind"].items()
                              if k != "other")
            lines += ["", f"{name}: {parity['verdict']} ({parity['checks']} checks, backend {parity['backend']}); "
                          f"worst: {worst or '-'}; failed: {', '.join(parity['failed']) or 'none'}"]
    if report.get("msda"):
        lines += ["", "Deformable attention, kernel vs PyTorch op (ms, x = speed-up):", "",
                  "| dtype | case | B | Q | backend | ref fwd | fwd | x | ref fwd+bwd | fwd+bwd | x | fwd+bwd MiB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in report["msda"]:
            lines.append(
                f"| {r['dtype']} | {r['case']} | {r['batch']} | {r['queries']} | {r['backend']} | "
                f"{fmt(r.get('reference_forward_ms'))} | {fmt(r['forward_ms'])} | {fmt(r['forward_speedup'])} | "
                f"{fmt(r.get('reference_forward_backward_ms'))} | {fmt(r.get('forward_backward_ms'))} | "
                f"{fmt(r.get('forward_backward_speedup'))} | {fmt(r.get('forward_backward_peak_mb'), '.0f')} |")
    for name in ("e2e_fp32", "e2e_bf16"):
        result = report.get(name)
        if not result:
            continue
        lines += ["", f"{name} ({result.get('config_file')}, {result.get('device')}):"]
        for task in ("inference", "train"):
            stats = result.get(task)
            if stats:
                # tools/benchmark.py records each task's autocast dtype (None: float32)
                precision = result.get(f"{task}_amp_dtype") or "float32"
                lines.append(f"- {task} ({precision}): {stats.get('inputs')}: "
                             f"median {fmt(stats.get('median_ms'))} ms, {fmt(stats.get('images_per_s'))} images/s, "
                             f"peak {fmt(stats.get('peak_memory_mib'), '.0f')} MiB")
    if any(any(row.get(p) is not None for p in ("float32", "bfloat16")) for row in report["gpu_table"]):
        lines += ["", "Ours (stages e2e_fp32, e2e_bf16, profile, batch8: configs and sizes in their notes; random "
                      "weights; bfloat16 = autocast):", "", "| figure | float32 | bfloat16 | issue 19 goal |",
                  "| --- | --- | --- | --- |"]
        for row in report["gpu_table"]:
            spec = ".2f" if "fraction" in row["figure"] or "/ eager" in row["figure"] else ".1f"
            lines.append(f"| {row['figure']} | {fmt(row.get('float32'), spec)} | {fmt(row.get('bfloat16'), spec)} | "
                         f"{row['goal']} |")
    if any(row.get("official") is not None for row in report["official_table"]):
        sizes = sorted({row["size"] for name in (*SIDE_BY_SIDE_STAGES, "sbs_memory")
                        for row in _get(report, name, "rows") or [] if "size" in row})
        lines += ["", f"Ours vs the official model (side_by_side.py and scripts/side_by_side_memory.py, one process, "
                      f"interleaved, R50 {', '.join(sizes)}, random weights; official attention: "
                      f"{report['official_variant']}; the official model runs float32):", "",
                  "| figure | official | ours float32 | ours / official | ours bfloat16 | ours / official |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in report["official_table"]:
            lines.append(f"| {row['figure']} | {fmt(row.get('official'), '.1f')} | {fmt(row.get('float32'), '.1f')} | "
                         f"{fmt(row.get('float32_ratio'))} | {fmt(row.get('bfloat16'), '.1f')} | "
                         f"{fmt(row.get('bfloat16_ratio'))} |")
    for precision, summary in ((report.get("profile") or {}).get("precisions") or {}).items():
        if summary.get("top_kernels"):
            lines += ["", f"Longest kernels per image ({precision}): " + "; ".join(
                f"{k['name'][:60]} {k['ms']:.2f} ms ({k['launches']:.0f}x)" for k in summary["top_kernels"][:5])]
    failed = [s for s in report["stages"] if s["status"] in ("failed", "timeout")]
    for s in failed:
        lines += ["", f"## {s['name']}: {s['status']} (exit {s['exit_code']})", "", "```", *s["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    work, out = args.work, args.out
    stages = read_stages(work)
    report = {
        "dry_run": bool(args.dry_run), "total_s": args.total_s, "budget_s": args.budget_s,
        "environment": read_json(work / "environment.json"),
        "stages": stages,
        "ok": not any(s["status"] in ("failed", "timeout") for s in stages),
    }
    names = {s["name"] for s in stages}
    imports_log = read_log(work, "imports")
    try:
        report["imports"] = json.loads(imports_log[imports_log.index("{"):])
    except ValueError:  # no JSON: the stage broke before printing it (its log tail says why)
        report["imports"] = None
    if "gpu_tests" in names:
        report["gpu_tests"] = pytest_summary(read_log(work, "gpu_tests"))
    for name in ("parity_tiny", "parity_r50"):
        if name in names:
            report[name] = parity_summary(read_log(work, name))
    report["msda"] = msda_summary(read_json(work / "msda.json"))
    for name in ("e2e_fp32", "e2e_bf16", "e2e_graphs", "profile", "batch8"):
        report[name] = read_json(work / f"{name}.json")
    for name in (*SIDE_BY_SIDE_STAGES, "sbs_memory"):
        report[name] = side_by_side_summary(read_log(work, name))
    report["official_variant"] = official_variant(report, read_log(work, "official_setup"))
    report["gpu_table"] = gpu_table(report)
    report["official_table"] = official_table(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_report.md").write_text(markdown(report))
    with open(out / "gpu_check.log", "w") as f:
        for s in stages:
            f.write(f"===== {s['name']}: {s['status']} in {s['seconds']} s (exit {s['exit_code']})\n$ {s['command']}\n")
            f.write(read_log(work, s["name"]))
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
