#!/usr/bin/env bash
# scripts/gpu_wheels.sh DIR
#
# On a machine with the package index: fills DIR with every wheel scripts/gpu_check.sh installs on a GPU machine that
# has its own torch, torchvision, numpy, scipy, Pillow and opencv but no index (CPython 3.12, manylinux x86_64):
#   - requirements/gpu-py312.txt        wheels from the index, hash-pinned (pip download --only-binary=:all:);
#   - requirements/gpu-py312-sdist.txt  pure-Python packages published as source archives only: each archive is
#                                       downloaded hash-pinned and built into a py3-none-any wheel here;
#   - requirements/detectron2.txt       the hash-pinned detectron2 wheel (tagged cp310, installed pure, see INSTALL).
# Also copies the official tiny parity fixture into DIR when ../shared/fixtures has it, and ../shared/official into
# DIR/official (the GPU machine gets only what is carried). Prints every file and the total size; fails when DIR would hold two versions of one package.
#
# Environment: PYTHON (default: .venv/bin/python, else python3) runs pip.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "[gpu_wheels] ERROR: $*" >&2; exit 1; }
log() { echo "[gpu_wheels] $*" >&2; }

[[ $# -eq 1 ]] || die "usage: scripts/gpu_wheels.sh DIR"
DIR="$1"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
cd "$REPO_ROOT"

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
pip_quiet() {  # pip, minus the warnings about the index locations this machine's pip.conf names but lacks
    "$PYTHON" -m pip "$@" 2>&1 | { grep -v -e "^WARNING: Location" || true; }
    return "${PIPESTATUS[0]}"
}

log "wheels for CPython 3.12 manylinux x86_64 (requirements/gpu-py312.txt)"
pip_quiet download --quiet --no-deps --only-binary=:all: --require-hashes --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none "${PLATFORMS[@]}" -r requirements/gpu-py312.txt -d "$DIR" \
    || die "downloading requirements/gpu-py312.txt failed"

log "pure-Python wheels built from hash-pinned source archives (requirements/gpu-py312-sdist.txt)"
pip_quiet wheel --quiet --no-deps --require-hashes -r requirements/gpu-py312-sdist.txt -w "$DIR" \
    || die "building requirements/gpu-py312-sdist.txt failed"

log "detectron2, hash-pinned (requirements/detectron2.txt)"
pip_quiet download --quiet --no-deps --only-binary=:all: --require-hashes --python-version 3.10 --implementation cp \
    "${PLATFORMS[@]}" -r requirements/detectron2.txt -d "$DIR" || die "downloading requirements/detectron2.txt failed"

# Every wheel must install on CPython 3.12 except detectron2's, whose cp310 tag only reflects its unused _C.
for wheel in "$DIR"/*.whl; do
    name="$(basename "$wheel")"
    case "$name" in
        sal_detectron2-*) ;;
        *-py3-none-any.whl | *-py2.py3-none-any.whl | *-cp312-*.whl) ;;
        *) die "$name does not install on CPython 3.12" ;;
    esac
done
duplicates="$(for wheel in "$DIR"/*.whl; do basename "$wheel" | cut -d- -f1 | tr 'A-Z-' 'a-z_'; done | sort | uniq -d)"
[[ -z "$duplicates" ]] || die "$DIR holds more than one version of: $duplicates (empty DIR and run again)"

fixture="$REPO_ROOT/../shared/fixtures/focus_detr_tiny.pt"
if [[ -f "$fixture" ]]; then
    cp "$fixture" "$DIR/"
else
    log "no $fixture: gpu_check.sh's tiny-fixture parity stage will be skipped unless TINY_FIXTURE names one"
fi
# The official model for gpu_check.sh's side-by-side stages (timing only): its archive and set-up scripts, 0.2 MiB.
official="$REPO_ROOT/../shared/official"
if [[ -f "$official/setup_official.sh" ]]; then
    rm -rf "$DIR/official" && mkdir -p "$DIR/official" && cp "$official"/* "$DIR/official/"
else
    log "no $official: gpu_check.sh's side-by-side stages will be skipped unless OFFICIAL_SRC names it"
fi

ls -l "$DIR" | tail -n +2 | awk '{printf "  %10d  %s\n", $5, $9}'
wheel_bytes="$(cat "$DIR"/*.whl | wc -c)"
all_bytes="$(du -sb "$DIR" | cut -f1)"
echo "wheels: $(ls "$DIR"/*.whl | wc -l) files, $(awk -v b="$wheel_bytes" 'BEGIN{printf "%.1f", b/1048576}') MiB;" \
     "DIR in all (fixture included): $(awk -v b="$all_bytes" 'BEGIN{printf "%.1f", b/1048576}') MiB"
