"""Where the embedded demo dataset lives and the wheel it is made from.

The data comes from the ``deepforest`` wheel on PyPI (MIT licence), pinned by hash in ``requirements/demo-data.txt``:
it is downloaded with ``pip download --no-deps`` into ``<data root>/downloads`` and read as a zip file by
:mod:`.trees`, never installed or imported.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional, Tuple

__all__ = [
    "DATA_REQUIREMENT_FILE",
    "TreesCacheError",
    "default_cache_dir",
    "default_data_root",
    "download_source_wheel",
    "find_source_wheel",
    "read_data_requirement",
    "sha256_file",
]

# projects/FocusDETR/focus_detr/data/tree_source.py -> the repository root (the package is installed editable)
REPO_ROOT = Path(__file__).resolve().parents[4]
DATA_REQUIREMENT_FILE = REPO_ROOT / "requirements" / "demo-data.txt"


class TreesCacheError(RuntimeError):
    """The tree dataset cache is missing, stale or corrupt (the message says which and how to fix it; ``problem``,
    which alone)."""

    def __init__(self, message, problem=None):
        super().__init__(message)
        self.problem = problem or message


def default_data_root() -> Path:
    """``$DETECTRON2_DATASETS`` if set (``~`` expanded, as detectron2 does: quoted, the shell left it), else
    ``<repo>/datasets``."""
    env = os.environ.get("DETECTRON2_DATASETS")
    return Path(os.path.expanduser(env)) if env else REPO_ROOT / "datasets"  # ~user unknown: left as written


def default_cache_dir(data_root: Optional[os.PathLike] = None) -> Path:
    return Path(data_root or default_data_root()) / "trees"


def _download_dir(data_root: Optional[os.PathLike] = None) -> Path:
    return Path(data_root or default_data_root()) / "downloads"


def read_data_requirement(requirement_file: os.PathLike = DATA_REQUIREMENT_FILE) -> Tuple[str, str, str]:
    """``(name, version, sha256)`` of the single hash-pinned ``name==version --hash=sha256:...`` line."""
    lines = [
        line.strip()
        for line in Path(requirement_file).read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if len(lines) != 1:
        raise ValueError(f"{requirement_file}: expected exactly one requirement line, found {len(lines)}")
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)\s+--hash=sha256:([0-9a-f]{64})", lines[0])
    if match is None:
        raise ValueError(f"{requirement_file}: expected 'name==version --hash=sha256:<hex>', got {lines[0]!r}")
    return match.group(1), match.group(2), match.group(3)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_source_wheel(
    data_root: Optional[os.PathLike] = None, requirement_file: os.PathLike = DATA_REQUIREMENT_FILE
) -> Optional[Path]:
    """The downloaded source wheel if it is present with the pinned hash, else None."""
    name, version, sha256 = read_data_requirement(requirement_file)
    for candidate in sorted(_download_dir(data_root).glob(f"{name}-{version}-*.whl")):
        if sha256_file(candidate) == sha256:
            return candidate
    return None


def download_source_wheel(
    data_root: Optional[os.PathLike] = None, requirement_file: os.PathLike = DATA_REQUIREMENT_FILE
) -> Path:
    """Fetches the hash-pinned data wheel from the package index (no dependencies, never installed)."""
    found = find_source_wheel(data_root, requirement_file)
    if found is not None:
        return found
    download_dir = _download_dir(data_root)
    download_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--require-hashes", "-r", str(requirement_file), "-d", str(download_dir),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    found = find_source_wheel(data_root, requirement_file)
    if result.returncode != 0 or found is None:
        raise TreesCacheError(
            f"could not download the demo-data wheel pinned in {requirement_file} into {download_dir} "
            f"(pip exit code {result.returncode}):\n{result.stderr.strip()[-2000:]}"
        )
    return found
