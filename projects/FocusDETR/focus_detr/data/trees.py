"""The embedded demo dataset: real NEON aerial RGB tree crowns, tiled into the cache that :mod:`.tree_registration`
registers as ``trees_train`` / ``trees_val``.

Source: the ``deepforest`` wheel (:mod:`.tree_source` finds or downloads it), read as a zip file. Its annotated
images (Pascal-VOC XML, one box per tree crown) become a COCO dataset with one class, ``tree``:

* each image is partitioned into a grid of ``round(width / tile_size)`` x ``round(height / tile_size)`` near-equal,
  non-overlapping tiles (about ``tile_size`` pixels a side; a 400 px image stays whole);
* each box is clipped to each tile and kept there only if at least ``min_visible_fraction`` of its area is inside and
  both sides of the clipped box are at least ``min_box_side`` pixels;
* train and val are split by whole source image (see ``TREE_SOURCES``), so no tree is in both.

Cache layout (``<data root>/trees/``, data root = ``$DETECTRON2_DATASETS`` or ``<repo>/datasets``)::

    manifest.json              format, build parameters, source wheel hash, sha256 of every file, statistics
    train.json, val.json       COCO annotations (image entries also carry "source_image" and "tile_origin")
    images/{train,val}/*.png   the tiles
    LICENSE.deepforest         the data's licence

The cache is built in a temporary folder and renamed into place, and ``manifest.json`` is written last, so a cache
is either complete and verified or rejected: a missing, stale or corrupt cache is rebuilt (``ensure_trees_cache``)
or reported with a ``TreesCacheError`` naming the fix (``verify_trees_cache``, which registration runs first).
"""
from __future__ import annotations

import io
import json
import os
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image

from ..partial_files import PartialPath, naming_file, remove_abandoned
from .tree_source import (
    DATA_REQUIREMENT_FILE,
    TreesCacheError,
    default_cache_dir,
    download_source_wheel,
    read_data_requirement,
    sha256_file,
)

__all__ = [
    "CLASS_NAME",
    "TREE_SOURCES",
    "TilingParams",
    "TreeSource",
    "build_trees_cache",
    "ensure_trees_cache",
    "tile_edges",
    "verify_trees_cache",
]

# bump whenever a change to this file changes what the cache contains: older caches are then rebuilt
CACHE_FORMAT_VERSION = 2
CLASS_NAME = "tree"
SPLITS = ("train", "val")
MANIFEST_NAME = "manifest.json"
LICENSE_MEMBER = "deepforest-2.1.0.dist-info/licenses/LICENSE"

BoxXYXY = Tuple[float, float, float, float]


@dataclass(frozen=True)
class TreeSource:
    """One annotated source image inside the wheel and the split all of its tiles go to."""

    image: str
    annotation: str
    split: str


# Split by whole source image. val is the second Yellowstone (YELL) crop: same site and sensor as the largest
# training image, so a short training run is evaluated in-distribution; the two small plots from other sites (OSBS,
# SOAP; dead and alive trees both count as "tree") add variety to train.
TREE_SOURCES: Tuple[TreeSource, ...] = (
    TreeSource(
        "deepforest/data/2019_YELL_2_528000_4978000_image_crop2.png",
        "deepforest/data/2019_YELL_2_528000_4978000_image_crop2.xml",
        "train",
    ),
    TreeSource("deepforest/data/OSBS_029.png", "deepforest/data/OSBS_029.xml", "train"),
    TreeSource("deepforest/data/SOAP_061.png", "deepforest/data/SOAP_061.xml", "train"),
    TreeSource(
        "deepforest/data/2019_YELL_2_541000_4977000_image_crop.png",
        "deepforest/data/2019_YELL_2_541000_4977000_image_crop.xml",
        "val",
    ),
)


@dataclass(frozen=True)
class TilingParams:
    """How source images are cut into tiles and which clipped boxes are kept."""

    tile_size: int = 400
    min_visible_fraction: float = 0.5
    min_box_side: float = 2.0

    def __post_init__(self):
        if self.tile_size <= 0:
            raise ValueError(f"tile_size must be positive, got {self.tile_size}")
        if not 0.0 < self.min_visible_fraction <= 1.0:
            raise ValueError(f"min_visible_fraction must be in (0, 1], got {self.min_visible_fraction}")
        if self.min_box_side < 0:
            raise ValueError(f"min_box_side must be >= 0, got {self.min_box_side}")


# ----------------------------------------------------------------------------------------------------------------
# annotations and tiling
# ----------------------------------------------------------------------------------------------------------------
def _read_voc(xml_bytes: bytes, what: str) -> Tuple[int, int, List[BoxXYXY]]:
    """``(width, height, boxes)`` of a Pascal-VOC annotation; boxes are ``(x0, y0, x1, y1)`` in pixels."""
    root = ET.fromstring(xml_bytes)
    try:
        width = int(root.findtext("size/width"))
        height = int(root.findtext("size/height"))
        boxes = [
            tuple(float(obj.findtext(f"bndbox/{key}")) for key in ("xmin", "ymin", "xmax", "ymax"))
            for obj in root.iter("object")
        ]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: malformed Pascal-VOC annotation ({e})") from e
    return width, height, boxes


def tile_edges(length: int, tile_size: int) -> List[Tuple[int, int]]:
    """``[(start, end), ...]`` partitioning ``[0, length)`` into ``round(length / tile_size)`` (at least one)
    near-equal tiles, so every tile is within a factor 1.5 of ``tile_size`` (or the whole length if shorter)."""
    if length <= 0 or tile_size <= 0:
        raise ValueError(f"length and tile_size must be positive, got {length} and {tile_size}")
    count = max(1, round(length / tile_size))
    edges = [round(i * length / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _clip_to_tile(box: BoxXYXY, tile: BoxXYXY, params: TilingParams) -> Optional[BoxXYXY]:
    """The box clipped to the tile, in tile coordinates, or None if too little of it (or too thin a part) is inside."""
    x0, y0 = max(box[0], tile[0]), max(box[1], tile[1])
    x1, y1 = min(box[2], tile[2]), min(box[3], tile[3])
    if x1 - x0 < params.min_box_side or y1 - y0 < params.min_box_side or x1 <= x0 or y1 <= y0:
        return None
    if (x1 - x0) * (y1 - y0) < params.min_visible_fraction * (box[2] - box[0]) * (box[3] - box[1]):
        return None
    return (x0 - tile[0], y0 - tile[1], x1 - tile[0], y1 - tile[1])


def _empty_stats() -> Dict[str, int]:
    return {"source_images": 0, "tiles": 0, "source_boxes": 0, "boxes": 0, "degenerate_source_boxes": 0,
            "source_boxes_in_no_tile": 0}  # fmt: skip


def _write_split(
    wheel: zipfile.ZipFile, sources: Sequence[TreeSource], split: str, out_dir: Path, params: TilingParams
) -> Dict[str, int]:
    """Writes ``images/<split>/*.png`` and ``<split>.json``; returns the split's statistics."""
    stats = _empty_stats()
    images, annotations = [], []
    (out_dir / "images" / split).mkdir(parents=True)
    for source in sources:
        width, height, boxes = _read_voc(wheel.read(source.annotation), source.annotation)
        image = Image.open(io.BytesIO(wheel.read(source.image))).convert("RGB")
        if image.size != (width, height):
            raise ValueError(f"{source.image} is {image.size[0]}x{image.size[1]} but its annotation says {width}x{height}")
        valid = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
        stats["source_images"] += 1
        stats["source_boxes"] += len(boxes)
        stats["degenerate_source_boxes"] += len(boxes) - len(valid)
        used = [False] * len(valid)
        stem = Path(source.image).stem
        for ty0, ty1 in tile_edges(height, params.tile_size):
            for tx0, tx1 in tile_edges(width, params.tile_size):
                tile_box = (tx0, ty0, tx1, ty1)
                file_name = f"{split}/{stem}_x{tx0:04d}_y{ty0:04d}.png"
                image.crop(tile_box).save(out_dir / "images" / file_name)
                image_id = len(images) + 1
                images.append({"id": image_id, "file_name": file_name, "width": tx1 - tx0, "height": ty1 - ty0,
                               "source_image": Path(source.image).name, "tile_origin": [tx0, ty0]})  # fmt: skip
                for index, box in enumerate(valid):
                    clipped = _clip_to_tile(box, tile_box, params)
                    if clipped is None:
                        continue
                    used[index] = True
                    w, h = clipped[2] - clipped[0], clipped[3] - clipped[1]
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                        "bbox": [clipped[0], clipped[1], w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
        stats["source_boxes_in_no_tile"] += used.count(False)
    stats["tiles"] = len(images)
    stats["boxes"] = len(annotations)
    coco = {
        "info": {"description": f"NEON tree crowns from the deepforest wheel, {split} split, {params.tile_size}px tiles"},
        "licenses": [{"id": 1, "name": "MIT", "url": "https://github.com/weecology/DeepForest/blob/main/LICENSE"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": CLASS_NAME, "supercategory": "plant"}],
    }
    (out_dir / f"{split}.json").write_text(json.dumps(coco))
    return stats


def _expected_build_record(params: TilingParams, sources: Sequence[TreeSource], wheel_sha256: str) -> dict:
    return {
        "format": CACHE_FORMAT_VERSION,
        "params": asdict(params),
        "sources": [asdict(s) for s in sources],
        "source_wheel_sha256": wheel_sha256,
    }


def build_trees_cache(
    cache_dir: os.PathLike,
    wheel_path: os.PathLike,
    params: TilingParams = TilingParams(),
    sources: Sequence[TreeSource] = TREE_SOURCES,
) -> dict:
    """Builds the cache from the wheel into a temporary folder, then swaps it into ``cache_dir``; returns the manifest."""
    cache_dir, wheel_path = Path(cache_dir), Path(wheel_path)
    for split in {s.split for s in sources}:
        if split not in SPLITS:
            raise ValueError(f"sources: unknown split {split!r} (expected one of {SPLITS})")
    if not wheel_path.is_file():
        raise TreesCacheError(f"demo-data wheel not found at {wheel_path}; run tools/prepare_trees.py to download it")
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    # the folders of builds that were killed (kill -9, power loss); those of a build still running are kept
    remove_abandoned(cache_dir.parent, f".{cache_dir.name}.tmp-", folders=True)
    # a full disk names the cache folder, not only "[Errno 28]"
    with naming_file(cache_dir), \
            PartialPath(cache_dir.parent, prefix=f".{cache_dir.name}.tmp-", folder=True) as building, \
            PartialPath(cache_dir.parent, prefix=f".{cache_dir.name}.tmp-", folder=True) as replaced:
        tmp_dir = Path(building.path)
        with zipfile.ZipFile(wheel_path) as wheel:
            stats = {
                split: _write_split(wheel, [s for s in sources if s.split == split], split, tmp_dir, params)
                for split in SPLITS
            }
            (tmp_dir / "LICENSE.deepforest").write_bytes(wheel.read(LICENSE_MEMBER))
        files = {
            str(path.relative_to(tmp_dir)): sha256_file(path) for path in sorted(tmp_dir.rglob("*")) if path.is_file()
        }
        manifest = {**_expected_build_record(params, sources, sha256_file(wheel_path)), "stats": stats, "files": files}
        # written last: a folder without a manifest is never accepted as a cache
        (tmp_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        if cache_dir.exists():
            # moved into a locked folder of its own, which closing removes: a kill now leaves an abandoned one
            cache_dir.rename(Path(replaced.path) / cache_dir.name)
        tmp_dir.rename(cache_dir)
    return manifest


def _unlisted_files(cache_dir: Path, files: dict, sources: Sequence[TreeSource]) -> Optional[str]:
    """The first file the cache needs that the manifest ``files`` does not list (each split's json, every image it
    names), or one it lists outside the cache (``../x`` was hashed wherever it pointed); None when there is none."""
    outside, needed = [p for p in files if Path(p).is_absolute() or ".." in Path(p).parts], []
    for annotation_file in sorted({f"{source.split}.json" for source in sources}):
        try:  # an unreadable json is named by its hash check
            images = json.loads((cache_dir / annotation_file).read_text())["images"]
            needed += [annotation_file] + [f"images/{image['file_name']}" for image in images]
        except (OSError, ValueError, KeyError, TypeError):
            needed.append(annotation_file)
    missing = [name for name in needed if name not in files]
    return f"{outside[0]} inside the cache" if outside else (missing[0] if missing else None)


def _cache_error(problem, fix):
    return TreesCacheError(f"{problem}; {fix}", problem)


def verify_trees_cache(
    cache_dir: os.PathLike,
    params: TilingParams = TilingParams(),
    sources: Sequence[TreeSource] = TREE_SOURCES,
    requirement_file: os.PathLike = DATA_REQUIREMENT_FILE,
) -> dict:
    """The cache's manifest if the cache is complete, intact and built from the pinned wheel with these parameters;
    raises ``TreesCacheError`` saying what is wrong otherwise."""
    cache_dir = Path(cache_dir)
    fix = "run `make data` (`.venv/bin/python tools/prepare_trees.py`) to (re)build it"
    manifest_path = cache_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise _cache_error(f"tree dataset cache {cache_dir} is missing or incomplete (no {MANIFEST_NAME})", fix)
    try:
        manifest = json.loads(manifest_path.read_text())
        files = dict(manifest["files"])
        build_record = {key: manifest[key] for key in ("format", "params", "sources", "source_wheel_sha256")}
    except (ValueError, KeyError, TypeError) as e:
        raise _cache_error(f"tree dataset cache {cache_dir}: unreadable {MANIFEST_NAME} ({e!r})", fix) from e
    expected = _expected_build_record(params, sources, read_data_requirement(requirement_file)[2])
    if build_record != expected:
        changed = sorted(key for key in expected if build_record[key] != expected[key])
        raise _cache_error(f"tree dataset cache {cache_dir} is stale ({', '.join(changed)} changed)", fix)
    unlisted = _unlisted_files(cache_dir, files, sources)
    if unlisted:  # a hand-edited manifest checks only what it lists: an image removed with its entry went unseen
        raise _cache_error(f"tree dataset cache {cache_dir}: {MANIFEST_NAME} does not list {unlisted}", fix)
    for relative_path, sha256 in files.items():
        path = cache_dir / relative_path
        if not path.is_file():
            raise _cache_error(f"tree dataset cache {cache_dir}: {relative_path} is missing", fix)
        if sha256_file(path) != sha256:
            raise _cache_error(f"tree dataset cache {cache_dir}: {relative_path} is corrupt (hash mismatch)", fix)
    return manifest


def ensure_trees_cache(
    data_root: Optional[os.PathLike] = None,
    params: TilingParams = TilingParams(),
    requirement_file: os.PathLike = DATA_REQUIREMENT_FILE,
    log=print,
) -> dict:
    """Verifies ``<data_root>/trees``; when it is missing, stale or corrupt, fetches the wheel into
    ``<data_root>/downloads`` if needed and rebuilds the cache. Returns the manifest."""
    cache_dir = default_cache_dir(data_root)
    try:
        return verify_trees_cache(cache_dir, params, TREE_SOURCES, requirement_file)
    except TreesCacheError as e:
        # not the message's remedy, which is this very command
        log(f"[trees] {e.problem}\n[trees] rebuilding {cache_dir}")
    wheel_path = download_source_wheel(data_root, requirement_file)
    build_trees_cache(cache_dir, wheel_path, params, TREE_SOURCES)
    return verify_trees_cache(cache_dir, params, TREE_SOURCES, requirement_file)
