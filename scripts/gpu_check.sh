#!/usr/bin/env bash
# scripts/gpu_check.sh [--dry-run] OUT_DIR [WHEEL_DIR]
#
# One command that verifies and times the CUDA path on a GPU machine with its own torch, in the repository root,
# without network, in under 8 minutes (GPU_CHECK_BUDGET_S, default 450 s, bounds every stage's time limit):
#   1. wheels       pip install --no-index --no-deps --target <tmp site> WHEEL_DIR/*.whl (scripts/gpu_wheels.sh),
#                   then every module the checks import must be found (bundle or environment; versions recorded)
#   2. build        setup.py build_ext --inplace, MAX_JOBS = cores, FORCE_CUDA=1, arch of the visible GPU
#      fixture      (in the background, on the CPU) a full-size R50 parity fixture, tools/make_parity_fixture.py
#   3. gpu_tests    pytest -m gpu (tests/layers/test_ms_deform_attn_cuda.py and every other GPU test)
#   4. msda         tools/benchmark_msda.py --device cuda: fp32/fp16/bf16, fwd and fwd+bwd, R50 encoder and decoder
#   5. parity_tiny  tools/check_parity.py --device cuda on the official tiny fixture (TINY_FIXTURE)
#      parity_r50   tools/check_parity.py --device cuda on the full-size fixture made on the CPU
#   6. e2e_fp32     tools/benchmark.py --device cuda --json: R50 800x1333 inference, training step batch 2, memory
#      e2e_bf16     the same under bfloat16 autocast (--amp)
#      e2e_graphs   R50 800x1333 inference replayed from CUDA graphs (--cuda-graphs), bfloat16 and float32, against
#                   eager inference, interleaved
#   7. profile      tools/profile_inference.py --device cuda: R50 800x1333 batch 1, float32 and bfloat16, eager and
#                   from CUDA graphs: GPU busy fraction, kernels, launches, host<->device copies, synchronisations,
#                   operators per image
#      batch8       tools/benchmark.py --batch-size 8 --amp --compare-fp32: images/s at batch 8, bfloat16 and float32
#   8. official     (in the background from step 2 on, waited for before step 6) ../shared/official/setup_official.sh
#                   --build-cuda: the official detrex Focus-DETR with its compiled CUDA attention, for timing only;
#      sbs_fp32     side_by_side.py, DEVICE=cuda: official vs ours, R50 800x1333, inference and training step
#      sbs_bf16     the same with ours under bfloat16 autocast (OURS_AMP=1; the official model stays float32)
#      sbs_memory   scripts/side_by_side_memory.py: both models' peak memory per task, and which attention the
#                   official model has (its compiled op or none)
#   9. onnx_export  tools/export_model.py (when it exists): the export runs; onnxruntime-gpu is not needed
# and writes OUT_DIR/gpu_report.json, OUT_DIR/gpu_report.md, OUT_DIR/gpu_check.log (every stage's log). A failing
# stage is recorded and the next one runs; the exit status is 1 when any stage failed or timed out.
#
# --dry-run (no GPU needed): runs what can run on a CPU with the same commands -- the wheel install into a fresh
# target dir (tags of CPython 3.12 when this python is not 3.12: the bundle is checked, not imported), a CPU-only
# build in a scratch copy of the sources (the checkout's own extension may be loaded by running processes; when that
# extension is newer than csrc/ and setup.py, as `make test` leaves it, it is copied there instead of compiled again,
# unless GPU_CHECK_FRESH_BUILD=1), the selection of the GPU tests, and small CPU versions of the kernel benchmark,
# parity, e2e, profile, batch8 and export stages -- and prints each GPU stage's command as planned. The official
# model runs there too, on the CPU at 480x640 (inference only: sbs_fp32, sbs_memory). The same budget bounds it: on
# a few busy cores raise GPU_CHECK_BUDGET_S, or stages time out.
#
# Environment: PYTHON (default: python3; --dry-run: .venv/bin/python when present), TINY_FIXTURE (default: the first
# of ../shared/fixtures/, shared/fixtures/, WHEEL_DIR/ holding focus_detr_tiny.pt), OFFICIAL_SRC (default: the first
# of ../shared/official/, shared/official/, WHEEL_DIR/official/ holding setup_official.sh and side_by_side.py),
# MAX_JOBS (default: cores), GPU_CHECK_BUDGET_S (default 450), GPU_CHECK_FRESH_BUILD (--dry-run: 1 compiles always).
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
die() { echo "[gpu_check] ERROR: $*" >&2; exit 2; }
log() { echo "[gpu_check] $*" >&2; }

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
[[ $# -ge 1 && $# -le 2 ]] || die "usage: scripts/gpu_check.sh [--dry-run] OUT_DIR [WHEEL_DIR]"
OUT="$1"
WHEEL_DIR="${2:-}"
[[ -z "$WHEEL_DIR" || -d "$WHEEL_DIR" ]] || die "wheel dir not found: $WHEEL_DIR"
mkdir -p "$OUT" || die "cannot create $OUT"
OUT="$(cd "$OUT" && pwd)"
[[ -n "$WHEEL_DIR" ]] && WHEEL_DIR="$(cd "$WHEEL_DIR" && pwd)"

if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ $DRY_RUN == 1 && -x "$REPO_ROOT/.venv/bin/python" ]] && PYTHON="$REPO_ROOT/.venv/bin/python"
fi
command -v "$PYTHON" >/dev/null || die "python not found: $PYTHON (set PYTHON)"
# the machine's cores: nproc alone obeys OMP_NUM_THREADS, which a caller sets for the stages, not for the build
CORES="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
export MAX_JOBS="${MAX_JOBS:-$CORES}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"
START=$SECONDS
DEADLINE=$((START + BUDGET_S))
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
SITE="$WORK/site"
STAGES="$WORK/stages.tsv"
: > "$STAGES"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

if [[ -z "${TINY_FIXTURE:-}" ]]; then
    for candidate in ../shared/fixtures/focus_detr_tiny.pt shared/fixtures/focus_detr_tiny.pt \
            ${WHEEL_DIR:+"$WHEEL_DIR/focus_detr_tiny.pt"}; do
        if [[ -f "$candidate" ]]; then TINY_FIXTURE="$(readlink -f "$candidate")"; break; fi
    done
fi
TINY_FIXTURE="${TINY_FIXTURE:-}"
if [[ -z "${OFFICIAL_SRC:-}" ]]; then
    for candidate in ../shared/official shared/official ${WHEEL_DIR:+"$WHEEL_DIR/official"}; do
        if [[ -f "$candidate/setup_official.sh" && -f "$candidate/side_by_side.py" ]]; then
            OFFICIAL_SRC="$(cd "$candidate" && pwd)"; break
        fi
    done
fi
OFFICIAL_SRC="${OFFICIAL_SRC:-}"

# record NAME STATUS SECONDS RC NOTE COMMAND: one line of $STAGES (status ok|failed|timeout|skipped|planned)
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5//$'\t'/ }" "${6//$'\t'/ }" >> "$STAGES"; }

# stage NAME LIMIT_S NOTE -- COMMAND...: runs COMMAND under `timeout`, limited to what is left of the budget;
# stdout+stderr go to $WORK/NAME.log.
stage() {
    local name="$1" limit="$2" note="$3"; shift 4
    local left=$((DEADLINE - SECONDS)) started=$SECONDS rc status
    (( limit > left )) && limit=$left
    if (( limit < 10 )); then
        record "$name" skipped 0 "" "no time left in the ${BUDGET_S} s budget" "$*"
        log "$name: skipped (budget spent)"; return 0
    fi
    log "$name: running (limit ${limit} s)"
    # through bash -c so that COMMAND may be one of the exported functions below
    timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" > "$WORK/$name.log" 2>&1
    rc=$?
    case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
    record "$name" "$status" $((SECONDS - started)) "$rc" "$note" "$*"
    log "$name: $status in $((SECONDS - started)) s"
}
planned() {  # planned NAME COMMAND...: a GPU stage the dry run does not execute
    local name="$1"; shift
    record "$name" planned 0 "" "needs a GPU" "$*"
    log "$name: planned (GPU): $*"
}
skipped() { record "$1" skipped 0 "" "$2" ""; log "$1: skipped: $2"; }

# --- 0. environment ---------------------------------------------------------------------------------------------
"$PYTHON" - > "$WORK/environment.json" 2> "$WORK/environment.log" <<'EOF'
import json, os, platform, subprocess, sys
import torch
info = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
        "cpu_cores": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
    info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
for tool, args in (("nvcc", ["nvcc", "--version"]),
                   ("driver", ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])):
    try:
        info[tool] = subprocess.run(args, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[-1]
    except (OSError, IndexError, subprocess.SubprocessError):
        info[tool] = None
print(json.dumps(info))
EOF
HAS_GPU="$("$PYTHON" -c 'import json, sys; print(int(json.load(open(sys.argv[1]))["cuda_available"]))' \
    "$WORK/environment.json" 2>/dev/null || echo 0)"
if [[ $DRY_RUN == 0 && $HAS_GPU != 1 ]]; then
    log "WARNING: no CUDA device visible to $PYTHON: the GPU stages will fail (use --dry-run on a CPU machine)"
fi
PY_TAG="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
log "python $PY_TAG ($PYTHON), $CORES cores, dry run: $DRY_RUN, work dir $WORK"

# --- 1. wheels into a fresh target dir ----------------------------------------------------------------------------
REQUIRED_MODULES="detectron2 fvcore iopath pycocotools omegaconf hydra antlr4 termcolor yacs tabulate cloudpickle tqdm \
portalocker yaml packaging scipy cv2 PIL torch torchvision numpy"
install_wheels() {
    local tags=() others=() d2=()
    # pip checks a wheel's tags against the python that runs it, or against --python-version with --target: the dry
    # run on another python installs for CPython 3.12 (the GPU machine's), so the bundle is checked as it will be used.
    if [[ "$PY_TAG" != 312 ]]; then
        tags=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
              --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    fi
    for wheel in "$WHEEL_DIR"/*.whl; do
        case "$(basename "$wheel")" in sal_detectron2-*) d2+=("$wheel") ;; *) others+=("$wheel") ;; esac
    done
    [[ ${#d2[@]} -eq 1 ]] || { echo "expected one sal_detectron2 wheel in $WHEEL_DIR, found ${#d2[@]}"; return 1; }
    rm -rf "$SITE" && mkdir -p "$SITE"
    "$PYTHON" -m pip install --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --target "$SITE" "${tags[@]}" "${others[@]}" || return 1
    # detectron2's wheel is tagged cp310 for its compiled _C, which nothing here loads: installed as plain files.
    "$PYTHON" -m pip install --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --target "$SITE" --only-binary=:all: --python-version 3.10 --implementation cp "${d2[@]}" || return 1
    ls "$SITE"
}
export PYTHON PY_TAG SITE WHEEL_DIR
export -f install_wheels
if [[ -n "$WHEEL_DIR" ]]; then
    stage wheels 90 "$(ls "$WHEEL_DIR"/*.whl | wc -l) wheels from $WHEEL_DIR" -- install_wheels
    if [[ "$PY_TAG" == 312 ]]; then export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"; fi
else
    skipped wheels "no WHEEL_DIR given: the environment's own packages are used"
fi
# The bundle's modules are looked up in the target dir, the rest on the interpreter's path; where the target dir was
# made for another python (dry run), modules are located (find_spec) but not imported.
check_modules() {
    "$PYTHON" - "$SITE" "$PY_TAG" $REQUIRED_MODULES <<'EOF'
import importlib, importlib.machinery, importlib.metadata as md, importlib.util, json, os, sys
site, py_tag, modules = sys.argv[1], sys.argv[2], sys.argv[3:]
cross = py_tag != "312" and os.path.isdir(site)
dists = md.packages_distributions()
result, missing = {}, []
for name in modules:
    spec = importlib.machinery.PathFinder.find_spec(name, [site]) if os.path.isdir(site) else None
    where = "bundle" if spec else "environment"
    if spec is None or not cross:
        try:
            spec = importlib.util.find_spec(name)
            if spec is not None and not cross:
                importlib.import_module(name)
        except Exception as error:  # a module that is there but does not import is as missing as an absent one
            missing.append(f"{name} ({type(error).__name__}: {error})")
            continue
    if spec is None:
        missing.append(name)
        continue
    origin = spec.origin or (list(spec.submodule_search_locations or [""])[0])
    version = None
    for dist in dists.get(name, []):
        try:
            version = md.version(dist)
        except md.PackageNotFoundError:
            pass
    if where == "bundle":
        found = [d for d in os.listdir(site) if d.endswith(".dist-info") and name.lower() in d.lower()]
        version = version if not found else found[0].rsplit(".dist-info")[0].split("-")[-1]
    result[name] = {"from": where, "path": origin, "version": version, "imported": not cross}
print(json.dumps({"modules": result, "missing": missing, "located_only": cross}, indent=1))
sys.exit(1 if missing else 0)
EOF
}
export REQUIRED_MODULES
export -f check_modules
stage imports 60 "every module the checks import" -- check_modules

# --- 2. build (and, in the background, the full-size fixture on the CPU) --------------------------------------------
if [[ $DRY_RUN == 1 ]]; then
    BUILD_ROOT="$WORK/src"
    mkdir -p "$BUILD_ROOT"
    cp setup.py "$BUILD_ROOT/"
    (cd "$REPO_ROOT" && tar --exclude='*.so' --exclude=__pycache__ -cf - projects) | tar -xf - -C "$BUILD_ROOT"
    export NO_CUDA=1
    BUILD_NOTE="dry run: CPU kernel only (NO_CUDA=1), in a scratch copy of the sources"
    # A compile took most of the dry run's time, and setup_env.sh has just compiled the same sources: its extension
    # is copied when it is newer than every source (make's rule), and checked as a fresh build would be.
    # this python's own file name (_C.cpython-311-x86_64-linux-gnu.so): a build for another python is no use
    BUILT_EXTENSION="projects/FocusDETR/focus_detr/layers/_C$("$PYTHON" -c \
        'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))' 2>/dev/null)"
    if [[ "${GPU_CHECK_FRESH_BUILD:-0}" != 1 && -f "$BUILT_EXTENSION" && -z "$(find -L setup.py \
            projects/FocusDETR/focus_detr/layers/csrc -newer "$BUILT_EXTENSION" -print -quit)" ]]; then
        cp "$BUILT_EXTENSION" "$BUILD_ROOT/projects/FocusDETR/focus_detr/layers/"
        BUILD_NOTE="dry run: the checkout's extension (newer than its sources) copied to a scratch copy, not compiled"
    else
        BUILT_EXTENSION=""
    fi
else
    BUILD_ROOT="$REPO_ROOT"
    BUILT_EXTENSION=""
    export FORCE_CUDA=1
    BUILD_NOTE="CUDA + CPU kernels, in place"
fi
export PYTHONPATH="$BUILD_ROOT/projects/FocusDETR${PYTHONPATH:+:$PYTHONPATH}"
extension_loads() {
    "$PYTHON" -c 'import focus_detr.layers.ms_deform_attn_backends as m, sys; s = m.extension_status(); print(m.__file__, s)
want = "cpu" if sys.argv[1] == "1" else "cuda"
backends = m.available_backends(want)
print("backends on", want, backends)
sys.exit(0 if want in backends else 1)' "$DRY_RUN"
}
build_in_place() {
    if [[ -n "${BUILT_EXTENSION:-}" ]]; then
        extension_loads && return 0
        echo "the copied extension does not load with this python and torch: compiling it"
    fi
    (cd "$BUILD_ROOT" && "$PYTHON" setup.py build_ext --inplace) || return 1
    extension_loads
}

export BUILD_ROOT DRY_RUN BUILT_EXTENSION
export -f extension_loads build_in_place

R50_CONFIG=configs/focus_detr_r50_4scale_12ep.py
R50_FIXTURE="$WORK/r50_fixture.pt"
if [[ $DRY_RUN == 1 ]]; then R50_SIZES=(256x256 256x320); else R50_SIZES=(800x800 800x1066); fi
# The reference outputs come from the PyTorch op on the CPU, so the GPU check compares the CUDA kernel and cuDNN
# against an independent computation; half the cores, the build has the other half.
FOCUS_DETR_MSDA_BACKEND=pytorch OMP_NUM_THREADS=$(( CORES > 1 ? CORES / 2 : 1 )) \
    stage fixture 300 "R50, ${R50_SIZES[*]}, PyTorch op on the CPU" -- \
    "$PYTHON" tools/make_parity_fixture.py --config-file "$R50_CONFIG" --sizes "${R50_SIZES[@]}" \
    --output "$R50_FIXTURE" &
FIXTURE_PID=$!

build_start=$SECONDS
stage build 300 "$BUILD_NOTE, MAX_JOBS=$MAX_JOBS" -- build_in_place
log "build took $((SECONDS - build_start)) s"

# --- the official model, set up in the background (for side-by-side timing only, never copied from) ----------------
OFFICIAL_DIR="$WORK/official"
setup_official() {  # setup_official OPTIONS...: unpack (and build) it; the build's log tail when it did not build
    bash "$OFFICIAL_SRC/setup_official.sh" "$OFFICIAL_DIR" "$@" || return 1
    # a failed build leaves an empty detrex/_C.py in place of the compiled module
    if [[ -f "$OFFICIAL_DIR/build.log" && -f "$OFFICIAL_DIR/detrex/_C.py" ]]; then tail -n 30 "$OFFICIAL_DIR/build.log"; fi
}
run_official() {  # run_official SCRIPT ARGS...: a side-by-side script, from the official folder, on its PYTHONPATH
    cd "$OFFICIAL_DIR" && PYTHONPATH="$OFFICIAL_DIR:$OFFICIAL_DIR/_stubs:$PYTHONPATH" "$PYTHON" "$@"
}
export OFFICIAL_SRC OFFICIAL_DIR
export -f setup_official run_official
OFFICIAL_PID=""
if [[ -z "$OFFICIAL_SRC" ]]; then
    skipped official_setup "no setup_official.sh found (set OFFICIAL_SRC or put ../shared/official in WHEEL_DIR/official)"
elif [[ $DRY_RUN == 1 ]]; then
    stage official_setup 60 "dry run: unpacked for the CPU (--cpu), no build" -- setup_official --cpu &
    OFFICIAL_PID=$!
else
    # the toolkit and architectures our build used (its log), so that detrex's setup.py finds the same nvcc
    cuda_line="$(grep -o 'CUDA_HOME=[^,]*, TORCH_CUDA_ARCH_LIST=[^ ]*' "$WORK/build.log" 2>/dev/null | tail -n 1)"
    if [[ -n "$cuda_line" ]]; then
        export CUDA_HOME="${cuda_line%%,*}" && CUDA_HOME="${CUDA_HOME#CUDA_HOME=}"
        export TORCH_CUDA_ARCH_LIST="${cuda_line##*TORCH_CUDA_ARCH_LIST=}"
    fi
    stage official_setup 240 "detrex's own CUDA attention (--build-cuda), CUDA_HOME=${CUDA_HOME:-unset}" -- \
        setup_official --build-cuda &
    OFFICIAL_PID=$!
fi

# --- 3. GPU tests ---------------------------------------------------------------------------------------------------
PYTEST_LIMITS=()
"$PYTHON" -c 'import pytest_timeout' 2>/dev/null && PYTEST_LIMITS=(--timeout=120)
if [[ $DRY_RUN == 1 ]]; then
    stage gpu_tests_selected 60 "dry run: the GPU tests pytest -m gpu selects" -- \
        "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu --collect-only tests
    planned gpu_tests "$PYTHON" -m pytest -q -p no:cacheprovider -ra -m gpu "${PYTEST_LIMITS[@]}" tests
else
    stage gpu_tests 150 "pytest -m gpu" -- \
        "$PYTHON" -m pytest -q -p no:cacheprovider -ra -m gpu "${PYTEST_LIMITS[@]}" tests
fi

# --- 4. kernel benchmark --------------------------------------------------------------------------------------------
if [[ $DRY_RUN == 1 ]]; then
    stage msda 60 "dry run: CPU, decoder case, 50 queries" -- "$PYTHON" tools/benchmark_msda.py --device cpu \
        --cases decoder --decoder-queries 50 --batch 1 --repeats 1 --warmup 1 --json "$WORK/msda.json"
    planned msda_cuda "$PYTHON" tools/benchmark_msda.py --device cuda --dtype float32 float16 bfloat16 \
        --cases encoder focus decoder --batch 1 2 --json "$WORK/msda.json"
else
    stage msda 120 "fp32/fp16/bf16 x encoder/focus/decoder x batch 1/2, vs the PyTorch op" -- \
        "$PYTHON" tools/benchmark_msda.py --device cuda --dtype float32 float16 bfloat16 \
        --cases encoder focus decoder --batch 1 2 --json "$WORK/msda.json"
fi

# --- 5. parity ------------------------------------------------------------------------------------------------------
if [[ $DRY_RUN == 1 ]]; then DEVICE=cpu; else DEVICE=cuda; fi
if [[ -n "$TINY_FIXTURE" ]]; then
    stage parity_tiny 90 "official tiny fixture on $DEVICE" -- \
        "$PYTHON" tools/check_parity.py --fixture "$TINY_FIXTURE" --device "$DEVICE"
else
    skipped parity_tiny "no focus_detr_tiny.pt found (set TINY_FIXTURE or put it in WHEEL_DIR)"
fi
wait "$FIXTURE_PID"
if [[ -f "$R50_FIXTURE" ]]; then
    stage parity_r50 120 "full-size R50 fixture (${R50_SIZES[*]}) on $DEVICE" -- \
        "$PYTHON" tools/check_parity.py --fixture "$R50_FIXTURE" --config-file "$R50_CONFIG" --device "$DEVICE"
else
    skipped parity_r50 "the fixture stage wrote no fixture"
fi

# --- 6. end-to-end benchmark ----------------------------------------------------------------------------------------
# no compile running beside the timed stages
[[ -n "$OFFICIAL_PID" ]] && wait "$OFFICIAL_PID"
if [[ $DRY_RUN == 1 ]]; then
    stage e2e_fp32 90 "dry run: tiny config, 128x128, CPU" -- "$PYTHON" tools/benchmark.py \
        --config-file configs/testing/focus_detr_tiny_fixture.py --device cpu --input-size 128 128 --warmup 1 \
        --repeats 1 --train-batch-size 2 --json "$WORK/e2e_fp32.json"
    planned e2e_cuda_fp32 "$PYTHON" tools/benchmark.py --config-file "$R50_CONFIG" --device cuda \
        --input-size 800 1333 --train-batch-size 2 --json "$WORK/e2e_fp32.json"
    planned e2e_cuda_bf16 "$PYTHON" tools/benchmark.py --config-file "$R50_CONFIG" --device cuda --amp \
        --input-size 800 1333 --train-batch-size 2 --json "$WORK/e2e_bf16.json"
    planned e2e_cuda_graphs "$PYTHON" tools/benchmark.py --config-file "$R50_CONFIG" --device cuda --amp \
        --compare-fp32 --cuda-graphs --tasks inference --input-size 800 1333 --json "$WORK/e2e_graphs.json"
else
    stage e2e_fp32 120 "R50 800x1333, float32" -- "$PYTHON" tools/benchmark.py --config-file "$R50_CONFIG" \
        --device cuda --input-size 800 1333 --train-batch-size 2 --json "$WORK/e2e_fp32.json"
    stage e2e_bf16 120 "R50 800x1333, bfloat16 autocast" -- "$PYTHON" tools/benchmark.py \
        --config-file "$R50_CONFIG" --device cuda --amp --input-size 800 1333 --train-batch-size 2 \
        --json "$WORK/e2e_bf16.json"
    stage e2e_graphs 90 "R50 800x1333 inference from CUDA graphs, bfloat16 and float32, against eager" -- \
        "$PYTHON" tools/benchmark.py --config-file "$R50_CONFIG" --device cuda --amp --compare-fp32 --cuda-graphs \
        --tasks inference --input-size 800 1333 --json "$WORK/e2e_graphs.json"
fi

# --- 7. where the time goes, batched throughput ---------------------------------------------------------------------
if [[ $DRY_RUN == 1 ]]; then
    stage profile 90 "dry run: tiny config, 128x160, CPU (operator counts only)" -- "$PYTHON" tools/profile_inference.py \
        --config-file configs/testing/focus_detr_tiny_fixture.py --device cpu --input-size 128 160 \
        --precision float32 bfloat16 --warmup 1 --repeats 1 --profiled 1 --json "$WORK/profile.json"
    planned profile_cuda "$PYTHON" tools/profile_inference.py --config-file "$R50_CONFIG" --device cuda \
        --input-size 800 1333 --precision float32 bfloat16 --cuda-graphs --warmup 5 --repeats 20 --profiled 5 \
        --json "$WORK/profile.json"
    stage batch8 90 "dry run: tiny config, batch 2 of 128x128, CPU" -- "$PYTHON" tools/benchmark.py \
        --config-file configs/testing/focus_detr_tiny_fixture.py --device cpu --input-size 128 128 --batch-size 2 \
        --amp --compare-fp32 --tasks inference --warmup 0 --repeats 1 --json "$WORK/batch8.json"
    planned batch8_cuda "$PYTHON" tools/benchmark.py --config-file "$R50_CONFIG" --device cuda --input-size 800 1333 \
        --batch-size 8 --amp --compare-fp32 --tasks inference --warmup 2 --repeats 5 --json "$WORK/batch8.json"
else
    stage profile 150 "R50 800x1333 batch 1, float32 and bfloat16 autocast, eager and CUDA graphs, torch.profiler" \
        -- "$PYTHON" tools/profile_inference.py --config-file "$R50_CONFIG" --device cuda --input-size 800 1333 \
        --precision float32 bfloat16 --cuda-graphs --warmup 5 --repeats 20 --profiled 5 --json "$WORK/profile.json"
    stage batch8 90 "R50 batch 8 of 800x1333, bfloat16 autocast and float32, inference" -- "$PYTHON" tools/benchmark.py \
        --config-file "$R50_CONFIG" --device cuda --input-size 800 1333 --batch-size 8 --amp --compare-fp32 \
        --tasks inference --warmup 2 --repeats 5 --json "$WORK/batch8.json"
fi

# --- 8. the official model side by side ------------------------------------------------------------------------------
if [[ ! -d "$OFFICIAL_DIR/detrex" ]]; then
    for name in sbs_fp32 sbs_bf16 sbs_memory; do skipped "$name" "the official model is not set up (official_setup)"; done
elif [[ $DRY_RUN == 1 ]]; then
    DEVICE=cpu SIZES=480x640 TASKS=inference REPS=1 THREADS="${OMP_NUM_THREADS:-$CORES}" stage sbs_fp32 150 \
        "dry run: CPU, 480x640, inference" -- run_official "$OFFICIAL_SRC/side_by_side.py" "$REPO_ROOT"
    planned sbs_cuda_fp32 DEVICE=cuda SIZES=800x1333 REPS=10 run_official side_by_side.py "$REPO_ROOT"
    planned sbs_cuda_bf16 DEVICE=cuda SIZES=800x1333 REPS=10 OURS_AMP=1 run_official side_by_side.py "$REPO_ROOT"
    DEVICE=cpu SIZE=480x640 TASKS=inference stage sbs_memory 120 "dry run: CPU, 480x640, inference (no memory)" -- \
        run_official "$REPO_ROOT/scripts/side_by_side_memory.py" "$REPO_ROOT"
    planned sbs_memory_cuda DEVICE=cuda SIZE=800x1333 run_official scripts/side_by_side_memory.py "$REPO_ROOT"
else
    DEVICE=cuda SIZES=800x1333 TASKS=inference,train REPS=10 THREADS="$CORES" stage sbs_fp32 120 \
        "official (float32) vs ours (float32), R50 800x1333, batch 1" -- \
        run_official "$OFFICIAL_SRC/side_by_side.py" "$REPO_ROOT"
    DEVICE=cuda SIZES=800x1333 TASKS=inference,train REPS=10 THREADS="$CORES" OURS_AMP=1 stage sbs_bf16 120 \
        "official (float32) vs ours (bfloat16 autocast), R50 800x1333, batch 1" -- \
        run_official "$OFFICIAL_SRC/side_by_side.py" "$REPO_ROOT"
    DEVICE=cuda SIZE=800x1333 TASKS=inference,train stage sbs_memory 90 "peak memory per task, both models" -- \
        run_official "$REPO_ROOT/scripts/side_by_side_memory.py" "$REPO_ROOT"
fi

# --- 9. ONNX export -------------------------------------------------------------------------------------------------
if [[ ! -f tools/export_model.py ]]; then
    skipped onnx_export "tools/export_model.py does not exist in this checkout"
elif ! "$PYTHON" -c 'import onnx, onnxruntime' 2> /dev/null; then
    # not in the GPU wheel bundle (100 MB installed here); the export runs wherever requirements/export.txt is installed
    skipped onnx_export "onnx / onnxruntime do not import here (requirements/export.txt)"
elif [[ $DRY_RUN == 1 ]]; then
    stage onnx_export 90 "dry run: tiny config, 160x160" -- "$PYTHON" tools/export_model.py \
        --config-file configs/testing/focus_detr_tiny_fixture.py --output "$WORK/onnx" --sample-size 160 160
else
    # The export traces on the CPU and verifies with onnxruntime (CPU): it checks that export works on this stack.
    stage onnx_export 120 "R50, traced at 800x1333" -- "$PYTHON" tools/export_model.py --config-file "$R50_CONFIG" \
        --output "$WORK/onnx" --sample-size 800 1333 'train.init_checkpoint=""'
fi

# --- report ---------------------------------------------------------------------------------------------------------
log "writing the report ($((SECONDS - START)) s so far)"
"$PYTHON" scripts/gpu_report.py --work "$WORK" --out "$OUT" --dry-run "$DRY_RUN" --total-s $((SECONDS - START)) \
    --budget-s "$BUDGET_S" || die "writing the report failed (stage logs: $WORK)"
rm -rf "$SITE" "$WORK/src" "$R50_FIXTURE" "$WORK/onnx" "$OFFICIAL_DIR"
cat "$OUT/gpu_report.md"
if grep -q -P '\t(failed|timeout)\t' "$STAGES"; then exit 1; fi
exit 0
