#!/usr/bin/env bash
# One idempotent set-up step: creates .venv/ at the repository root (python 3.11) and installs
#   1. torch, torchvision and the run-time / test dependencies, pinned by requirements/constraints.txt,
#   2. detectron2 (hash-pinned pure-Python wheel, requirements/detectron2.txt) into the venv's site-packages,
#      and onnx + onnxruntime (CPU; hash-pinned wheels, requirements/export.txt) for the ONNX export,
#   3. this project, editable (`import focus_detr` from anywhere), which compiles the deformable-attention
#      extension: the CPU kernel always, the CUDA kernel too when nvcc is found.
# Each stage is skipped when a stamp (hash of its inputs) says nothing changed, so a second run takes seconds.
# A change to requirements/* reinstalls the dependencies; a change to setup.py reinstalls the project; a change to
# layers/csrc (or to the CUDA settings below) rebuilds the extension in place, incrementally (objects kept in build/).
#
# Environment:
#   PYTHON                python 3.11 interpreter to create the venv with (default: python3.11)
#   CUDA_HOME             CUDA toolkit folder (default: resolved from nvcc on PATH, following a wrapper script)
#   TORCH_CUDA_ARCH_LIST  GPU architectures to compile for (default: "8.0;8.6;9.0")
#   FORCE_CUDA=1          a missing toolkit or a failed CUDA compile is an error (default: CPU-only build then)
#   MAX_JOBS              parallel compile jobs (default: 2)
#   SETUP_FORCE=1         ignore the stamps and redo every stage, .venv from scratch (the way to mend a damaged one)
if [ -z "${BASH_VERSION:-}" ]; then echo "[setup_env] ERROR: run it with bash: bash scripts/setup_env.sh" >&2; exit 1; fi
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
cd "$REPO_ROOT"

VENV="$REPO_ROOT/.venv"
PY="$VENV/bin/python"
DEPS_STAMP="$VENV/.focus_detr-deps.stamp"
BUILD_STAMP="$VENV/.focus_detr-build.stamp"
INSTALL_STAMP="$VENV/.focus_detr-install.stamp"
CSRC="projects/FocusDETR/focus_detr/layers/csrc"
EXT_DIR="projects/FocusDETR/focus_detr/layers"
PYTHON="${PYTHON:-python3.11}"
SETUP_FORCE="${SETUP_FORCE:-0}"

log() { echo "[setup_env] $*" >&2; }
die() { echo "[setup_env] ERROR: $*" >&2; exit 1; }
start_time=$SECONDS
# an interrupted stage left no stamp: the next run redoes it (pip's and the compiler's own messages say little)
trap 'echo "[setup_env] interrupted: run it again to resume" >&2; exit 130' INT TERM

# Two set-ups of one checkout at once installed into one .venv together and failed inside pip.
if command -v flock >/dev/null; then
    exec 9> "$REPO_ROOT/.setup_env.lock"
    if ! flock -n 9; then
        log "another set-up of this checkout is running: waiting for it to finish"
        flock 9
    fi
fi

hash_files() {  # sha256 over the names and contents of the given files, in the given order
    local f
    for f in "$@"; do
        printf '%s\n' "$f"
        sha256sum < "$f"
    done | sha256sum | cut -d' ' -f1
}

stamp_matches() {  # stamp_matches FILE VALUE
    [[ "$SETUP_FORCE" != "1" && -f "$1" && "$(cat "$1")" == "$2" ]]
}

# --- 1. the virtual environment ------------------------------------------------------------------------------
# Working: python 3.11 with pip. A venv creation cut short has no pip, and one whose interpreter was removed or
# upgraded does not run: either is made again, never installed into.
is_python311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }
venv_works() { [[ -x "$PY" ]] && is_python311 "$PY" && "$PY" -m pip --version >/dev/null 2>&1; }
remake_why=""
if [[ "$SETUP_FORCE" == "1" ]]; then
    remake_why="SETUP_FORCE=1"
elif ! venv_works; then
    remake_why="it is no working python 3.11 environment"
fi
if [[ -n "$remake_why" ]]; then
    command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found: install python 3.11 or set PYTHON=/path/to/python3.11"
    is_python311 "$PYTHON" || die "'$PYTHON' is not python 3.11 (set PYTHON=/path/to/python3.11)"
    if [[ -e "$VENV" ]]; then
        log "recreating $VENV ($remake_why) with $("$PYTHON" --version 2>&1)"
    else
        log "creating $VENV with $("$PYTHON" --version 2>&1)"
    fi
    "$PYTHON" -m venv --clear "$VENV" || die "creating $VENV with $PYTHON failed"
fi

# --- 2. dependencies (torch, detectron2, the rest) -----------------------------------------------------------
deps_hash="$(hash_files requirements/constraints.txt requirements/runtime.txt requirements/dev.txt \
    requirements/detectron2.txt requirements/export.txt scripts/setup_env.sh)"
if stamp_matches "$DEPS_STAMP" "$deps_hash"; then
    log "dependencies up to date"
else
    rm -f "$DEPS_STAMP"
    log "installing torch, torchvision and the run-time/test dependencies (pinned by requirements/constraints.txt)"
    # pip only: another resolver (uv, poetry) would download several GB of torch instead of using the local wheels
    if ! "$PY" -m pip install --quiet -c requirements/constraints.txt -r requirements/runtime.txt \
            -r requirements/dev.txt 2>&1 | { grep -v -e "^WARNING: Location" || true; }; then
        die "installing the dependencies failed"
    fi
    log "installing detectron2 (hash-pinned, pure Python) into the venv's site-packages"
    purelib="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # The wheel is tagged cp310 only because of its compiled _C, which python 3.11 neither loads nor needs;
    # --target into site-packages installs it as plain files, without its dependency metadata being resolved.
    if ! "$PY" -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.10 --require-hashes \
            --upgrade -r requirements/detectron2.txt --target "$purelib" 2>&1 \
            | { grep -v -e "^WARNING: Location" -e "^WARNING: Target directory" || true; }; then
        die "installing detectron2 failed"
    fi
    log "installing onnx and onnxruntime (CPU; hash-pinned, requirements/export.txt)"
    if ! "$PY" -m pip install --quiet --no-deps --only-binary=:all: --require-hashes -r requirements/export.txt 2>&1 \
            | { grep -v -e "^WARNING: Location" || true; }; then
        die "installing onnx/onnxruntime failed"
    fi
    "$PY" -c 'import detectron2, torch, torchvision, onnx, onnxruntime' \
        || die "detectron2/torch/onnx/onnxruntime do not import after installation"
    echo "$deps_hash" > "$DEPS_STAMP"
    log "dependencies installed in $((SECONDS - start_time)) s"
fi

# --- 3. this project, editable, with its compiled extension ----------------------------------------------------
resolve_cuda_home() {  # the toolkit folder two levels above the real nvcc (nvcc on PATH may be a wrapper script)
    if [[ -n "${CUDA_HOME:-}" ]]; then echo "$CUDA_HOME"; return; fi
    local nvcc real
    nvcc="$(command -v nvcc 2>/dev/null)" || return 0
    nvcc="$(readlink -f "$nvcc")"
    if head -c 2 "$nvcc" | grep -q '#!'; then
        real="$(grep -o -E 'exec[[:space:]]+[^[:space:]]*nvcc\b' "$nvcc" | head -n 1 | awk '{print $2}')"
        [[ -n "$real" ]] && nvcc="$(readlink -f "$real")"
    fi
    dirname "$(dirname "$nvcc")"
}
CUDA_HOME="$(resolve_cuda_home)"
export MAX_JOBS="${MAX_JOBS:-2}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;8.6;9.0}"
if [[ -n "$CUDA_HOME" ]]; then export CUDA_HOME; else unset CUDA_HOME; fi

mapfile -t csrc_files < <(find "$CSRC" -type f 2>/dev/null | LC_ALL=C sort)
mapfile -t cuda_sources < <(find "$CSRC/cuda" -name '*.cu' 2>/dev/null)
# the extension must be rebuilt when torch changes (its C++ ABI), not when any other dependency does
torch_version="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
install_hash="$( { echo "torch=$torch_version"; hash_files setup.py; } | sha256sum)"
build_hash="$( { echo "$install_hash"; hash_files "${csrc_files[@]}";
                 echo "CUDA_HOME=${CUDA_HOME:-} ARCH=$TORCH_CUDA_ARCH_LIST FORCE_CUDA=${FORCE_CUDA:-0}" \
                      "NO_CUDA=${NO_CUDA:-0}"; } | sha256sum)"
built_extension() { find "$EXT_DIR" -maxdepth 1 -name '_C*.so' | head -n 1; }
# installed editable from this checkout: a moved or copied checkout's .venv still imports the first one's code
editable_installed() {
    "$PY" -c 'import importlib.util as u, os, sys; s = u.find_spec("focus_detr")
sys.exit(s is None or not os.path.realpath(s.origin).startswith(os.path.realpath(sys.argv[1]) + os.sep))' \
        "$REPO_ROOT" 2>/dev/null
}
# loads, in a process of its own: a damaged one can kill the interpreter (a bus error)
extension_loads() { "$PY" -c 'import torch, focus_detr.layers._C' >/dev/null 2>&1; }

if stamp_matches "$BUILD_STAMP" "$build_hash" && editable_installed \
        && { [[ ${#csrc_files[@]} -eq 0 ]] || { [[ -n "$(built_extension)" ]] && extension_loads; }; }; then
    log "focus_detr (editable) and its extension up to date"
else
    rm -f "$BUILD_STAMP"
    build_start=$SECONDS
    if [[ ${#csrc_files[@]} -eq 0 ]]; then
        log "no extension sources under $CSRC yet: installing focus_detr without a compiled op"
    elif [[ "${NO_CUDA:-0}" != "1" && -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" && ${#cuda_sources[@]} -gt 0 ]]; then
        log "compiling the extension: CPU + CUDA kernels (CUDA_HOME=$CUDA_HOME," \
            "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS); this takes minutes on 2 cores"
    else
        if [[ "${NO_CUDA:-0}" == "1" ]]; then
            [[ "${FORCE_CUDA:-0}" == "1" ]] && die "FORCE_CUDA=1 and NO_CUDA=1 contradict each other: set one of them"
            log "compiling the extension: CPU kernel only (NO_CUDA=1)"
        else
            why="no nvcc/CUDA toolkit found or no CUDA sources"
            [[ -n "${CUDA_HOME:-}" && ! -x "$CUDA_HOME/bin/nvcc" ]] && why="CUDA_HOME=$CUDA_HOME has no bin/nvcc"
            [[ "${FORCE_CUDA:-0}" == "1" ]] && die "FORCE_CUDA=1 but $why"
            log "compiling the extension: CPU kernel only ($why)"
        fi
    fi
    if stamp_matches "$INSTALL_STAMP" "$install_hash" && editable_installed; then
        # Only the kernel sources (or build settings) changed: rebuild in place. build/ keeps ninja's objects,
        # so only the changed files recompile (pip's editable build would compile everything in a temp folder).
        mkdir -p build
        if ! "$PY" setup.py build_ext --inplace > build/setup_env-build_ext.log 2>&1; then
            tail -n 80 build/setup_env-build_ext.log >&2
            die "compiling the extension failed (full log: build/setup_env-build_ext.log)"
        fi
    else
        rm -f "$INSTALL_STAMP"
        # --no-build-isolation: the extension must be built against the torch installed above
        if ! "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 \
                | { grep -v -e "^WARNING: Location" || true; }; then
            die "pip install -e . failed (see the compiler output above)"
        fi
        echo "$install_hash" > "$INSTALL_STAMP"
    fi
    "$PY" -c 'import focus_detr, detectron2' || die "focus_detr does not import after the editable install"
    [[ ${#csrc_files[@]} -eq 0 ]] || extension_loads || die "the compiled extension does not load after the build"
    echo "$build_hash" > "$BUILD_STAMP"
    log "focus_detr installed (editable) and its extension built in $((SECONDS - build_start)) s"
fi

# --- report which kernels the installed extension carries ------------------------------------------------------
so_file="$(built_extension)"
if [[ ${#csrc_files[@]} -eq 0 ]]; then
    log "deformable-attention extension: not built (no sources yet)"
elif [[ -z "$so_file" ]]; then
    die "the extension sources exist but no compiled $EXT_DIR/_C*.so was produced"
elif grep -q -a -e 'libc10_cuda.so' -e 'libcudart' "$so_file"; then
    log "deformable-attention extension: CUDA kernel built (plus the CPU kernel) -> $so_file"
else
    [[ "${FORCE_CUDA:-0}" == "1" ]] && die "FORCE_CUDA=1 but $so_file carries no CUDA kernel"
    log "deformable-attention extension: CPU path only (CUDA kernel not built) -> $so_file"
fi
log "done in $((SECONDS - start_time)) s; use $PY"
