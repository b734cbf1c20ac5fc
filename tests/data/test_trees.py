"""The embedded tree dataset: what DatasetCatalog returns must agree with the source annotations in the wheel.

Expected boxes are recomputed here from the wheel's own files (the CSV annotations where the wheel has complete ones,
the Pascal-VOC XML otherwise) and the tile placement is checked against the source pixels, independently of the
builder's code. Needs the prepared cache (`make test` runs `tools/prepare_trees.py` first).
"""
import csv
import io
import json
import os
import re
import shutil
import stat
import xml.etree.ElementTree as ET
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from focus_detr.data import TreesCacheError, ensure_trees_cache, register_trees
from focus_detr.data.tree_source import default_cache_dir, find_source_wheel
from focus_detr.data.trees import (
    TREE_SOURCES,
    TilingParams,
    build_trees_cache,
    tile_edges,
    verify_trees_cache,
)

MEMBER_DIR = "deepforest/data/"
# wheel files with complete per-box annotations, independent of the XML files the builder reads
CSV_ANNOTATIONS = {"OSBS_029": "testfile_deepforest.csv", "SOAP_061": "testfile_multi.csv"}
TILE_NAME = re.compile(r"(?P<stem>.+)_x(?P<x>\d+)_y(?P<y>\d+)\.png$")


@pytest.fixture(scope="module")
def wheel_path():
    path = find_source_wheel()
    assert path is not None, "demo-data wheel not downloaded: run `python tools/prepare_trees.py` (make test does)"
    return path


@pytest.fixture(scope="module")
def dataset_names():
    return register_trees()


@pytest.fixture(scope="module")
def source_annotations(wheel_path):
    """{source stem: (width, height, [(x0, y0, x1, y1), ...])} read from the wheel."""
    annotations = {}
    with zipfile.ZipFile(wheel_path) as wheel:
        for source in TREE_SOURCES:
            stem = Path(source.image).stem
            width, height = Image.open(io.BytesIO(wheel.read(source.image))).size
            if stem in CSV_ANNOTATIONS:
                rows = csv.DictReader(io.StringIO(wheel.read(MEMBER_DIR + CSV_ANNOTATIONS[stem]).decode()))
                boxes = [tuple(float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")) for row in rows]
            else:
                root = ET.fromstring(wheel.read(source.annotation))
                boxes = [
                    tuple(float(obj.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
                    for obj in root.findall("object")
                ]
            assert boxes, f"no boxes read for {stem}"
            annotations[stem] = (width, height, boxes)
    return annotations


def _records_by_split(dataset_names):
    return {split: DatasetCatalog.get(name) for split, name in dataset_names.items()}


def _tile_of(record):
    match = TILE_NAME.search(Path(record["file_name"]).name)
    assert match, f"unexpected tile file name {record['file_name']}"
    return match["stem"], int(match["x"]), int(match["y"])


def _expected_tile_boxes(boxes, tile, params):
    """Source boxes clipped to the tile (tile coordinates, XYWH) that keep enough area and are not too thin."""
    x0, y0, x1, y1 = tile
    kept = []
    for bx0, by0, bx1, by1 in boxes:
        cx0, cy0, cx1, cy1 = max(bx0, x0), max(by0, y0), min(bx1, x1), min(by1, y1)
        w, h = cx1 - cx0, cy1 - cy0
        if w < params.min_box_side or h < params.min_box_side:
            continue
        if w * h < params.min_visible_fraction * (bx1 - bx0) * (by1 - by0):
            continue
        kept.append((cx0 - x0, cy0 - y0, w, h))
    return sorted(kept)


def test_splits_load_and_image_sizes_match_files(dataset_names):
    for split, records in _records_by_split(dataset_names).items():
        assert records, f"{split} is empty"
        assert MetadataCatalog.get(dataset_names[split]).thing_classes == ["tree"]
        for record in records:
            with Image.open(record["file_name"]) as image:
                assert image.size == (record["width"], record["height"]), record["file_name"]
            for annotation in record["annotations"]:
                x, y, w, h = annotation["bbox"]
                assert annotation["category_id"] == 0
                assert w > 0 and h > 0 and x >= 0 and y >= 0
                assert x + w <= record["width"] and y + h <= record["height"]


def test_tiles_partition_each_source_image_and_match_its_pixels(dataset_names, wheel_path, source_annotations):
    tiles_per_source = defaultdict(list)
    for records in _records_by_split(dataset_names).values():
        for record in records:
            stem, x, y = _tile_of(record)
            tiles_per_source[stem].append((x, y, x + record["width"], y + record["height"], record["file_name"]))
    assert set(tiles_per_source) == set(source_annotations)
    with zipfile.ZipFile(wheel_path) as wheel:
        for source in TREE_SOURCES:
            stem = Path(source.image).stem
            pixels = np.asarray(Image.open(io.BytesIO(wheel.read(source.image))).convert("RGB"))
            coverage = np.zeros(pixels.shape[:2], dtype=np.int32)
            for x0, y0, x1, y1, file_name in tiles_per_source[stem]:
                coverage[y0:y1, x0:x1] += 1
                tile = np.asarray(Image.open(file_name).convert("RGB"))
                assert np.array_equal(tile, pixels[y0:y1, x0:x1]), file_name
            assert (coverage == 1).all(), f"tiles of {stem} do not cover the image exactly once"


def test_box_counts_and_boxes_match_source_annotations(dataset_names, source_annotations):
    params = TilingParams()
    for split, records in _records_by_split(dataset_names).items():
        expected_total = 0
        for record in records:
            stem, x, y = _tile_of(record)
            tile = (x, y, x + record["width"], y + record["height"])
            expected = _expected_tile_boxes(source_annotations[stem][2], tile, params)
            actual = sorted(tuple(a["bbox"]) for a in record["annotations"])
            assert len(actual) == len(expected), f"{record['file_name']}: {len(actual)} boxes, expected {len(expected)}"
            np.testing.assert_allclose(np.reshape(actual, (-1, 4)), np.reshape(expected, (-1, 4)), atol=1e-6)
            expected_total += len(expected)
        assert sum(len(r["annotations"]) for r in records) == expected_total
        split_sources = {s for s in source_annotations if s in {_tile_of(r)[0] for r in records}}
        # a tree is lost only where tile borders cut it so that no part keeps enough of its area
        assert expected_total >= 0.95 * sum(len(source_annotations[s][2]) for s in split_sources), split


def test_no_source_image_in_both_splits(dataset_names):
    sources = {split: {_tile_of(r)[0] for r in records} for split, records in _records_by_split(dataset_names).items()}
    assert sources["train"] and sources["val"]
    assert not sources["train"] & sources["val"]


def test_manifest_statistics_agree_with_loaded_dataset(dataset_names):
    manifest = verify_trees_cache(default_cache_dir())
    for split, records in _records_by_split(dataset_names).items():
        assert manifest["stats"][split]["tiles"] == len(records)
        assert manifest["stats"][split]["boxes"] == sum(len(r["annotations"]) for r in records)


def test_tile_edges_partition_the_length():
    for length in (1, 399, 400, 601, 1035, 2472):
        edges = tile_edges(length, 400)
        assert edges[0][0] == 0 and edges[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
        assert all(end - start <= 600 for start, end in edges)
    with pytest.raises(ValueError, match="tile_size"):
        tile_edges(100, 0)


def test_missing_cache_is_reported_not_registered(tmp_path):
    with pytest.raises(TreesCacheError, match="missing or incomplete.*prepare_trees"):
        register_trees(tmp_path, name_prefix="trees_missing")
    assert "trees_missing_train" not in DatasetCatalog.list()


@pytest.fixture
def copied_data_root(tmp_path, wheel_path):
    """A private copy of the verified cache (and the wheel) that a test may damage."""
    shutil.copytree(default_cache_dir(), tmp_path / "trees")
    (tmp_path / "downloads").mkdir()
    shutil.copy(wheel_path, tmp_path / "downloads" / wheel_path.name)
    return tmp_path


def test_corrupt_cache_is_rejected_then_rebuilt(copied_data_root):
    cache = copied_data_root / "trees"
    tile = next((cache / "images" / "val").glob("*.png"))
    original = tile.read_bytes()
    tile.write_bytes(original[: len(original) // 2])
    with pytest.raises(TreesCacheError, match="corrupt"):
        register_trees(copied_data_root, name_prefix="trees_corrupt")
    assert "trees_corrupt_train" not in DatasetCatalog.list()

    messages = []
    ensure_trees_cache(copied_data_root, log=messages.append)
    assert any("corrupt" in m for m in messages)
    # the rebuild says what it does, not "run tools/prepare_trees.py": the command a user has just run
    assert not any("prepare_trees" in m or "make data" in m for m in messages), messages
    assert tile.read_bytes() == original
    verify_trees_cache(cache)


def test_damaged_manifest_or_changed_parameters_are_rejected(copied_data_root):
    cache = copied_data_root / "trees"
    with pytest.raises(TreesCacheError, match="stale"):
        verify_trees_cache(cache, params=TilingParams(tile_size=300))
    (cache / "manifest.json").write_text("{ not json")
    with pytest.raises(TreesCacheError, match="unreadable manifest"):
        verify_trees_cache(cache)
    (cache / "manifest.json").unlink()
    with pytest.raises(TreesCacheError, match="missing or incomplete"):
        verify_trees_cache(cache)


@pytest.mark.parametrize("edit", ["image removed with its entry", "no entries", "entry outside the cache"])
def test_a_manifest_that_leaves_out_what_the_cache_needs_is_rejected(copied_data_root, edit):
    # the manifest vouched only for what it listed: an image deleted with its entry, or "files": {}, passed, and a
    # "../" entry was hashed wherever it pointed
    cache = copied_data_root / "trees"
    manifest = json.loads((cache / "manifest.json").read_text())
    image = sorted(name for name in manifest["files"] if name.startswith("images/val/"))[0]
    if edit == "image removed with its entry":
        (cache / image).unlink()
        del manifest["files"][image]
        expected = f"manifest.json does not list {image}"
    elif edit == "no entries":
        manifest["files"] = {}
        expected = "manifest.json does not list train.json"
    else:
        manifest["files"]["../downloads/x.whl"] = "0" * 64
        expected = "manifest.json does not list ../downloads/x.whl inside the cache"
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TreesCacheError, match=re.escape(expected)):
        verify_trees_cache(cache)


def test_failed_build_leaves_previous_cache_intact(copied_data_root):
    cache = copied_data_root / "trees"
    broken_wheel = copied_data_root / "broken.whl"
    with zipfile.ZipFile(broken_wheel, "w") as wheel:
        wheel.writestr("deepforest/data/unrelated.txt", "no images here")
    with pytest.raises(KeyError):
        build_trees_cache(cache, broken_wheel)
    verify_trees_cache(cache)
    assert sorted(p.name for p in copied_data_root.iterdir()) == ["broken.whl", "downloads", "trees"]


def test_bad_tiling_parameters_are_rejected():
    with pytest.raises(ValueError, match="min_visible_fraction"):
        TilingParams(min_visible_fraction=0.0)
    with pytest.raises(ValueError, match="tile_size"):
        TilingParams(tile_size=-1)


def test_cache_json_is_plain_coco(dataset_names):
    coco = json.loads((default_cache_dir() / "val.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["tree"]
    assert {a["image_id"] for a in coco["annotations"]} <= {i["id"] for i in coco["images"]}


def test_cache_folder_has_the_usual_permissions(tmp_path, wheel_path):
    umask = os.umask(0)
    os.umask(umask)
    build_trees_cache(tmp_path / "trees", wheel_path)
    assert stat.S_IMODE((tmp_path / "trees").stat().st_mode) == 0o777 & ~umask  # not private to its creator


def test_a_build_stopped_by_sigterm_leaves_no_temporary_folder(wheel_path, tmp_path, monkeypatch, capsys):
    # tools/prepare_trees.py ended silently on SIGTERM / SIGHUP and left a .trees.tmp-* folder (up to 16 MB) each time
    import signal
    import time

    import focus_detr.data.trees as trees
    from focus_detr.engine.cli import run_reporting_errors

    def stopped_midway(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the signal interrupts this

    monkeypatch.setattr(trees, "_write_split", stopped_midway)
    assert run_reporting_errors(trees.build_trees_cache, tmp_path / "trees", wheel_path) == 143
    assert capsys.readouterr().err == "interrupted by SIGTERM\n"
    assert list(tmp_path.iterdir()) == []


def test_a_build_removes_the_folders_killed_builds_left_and_keeps_a_running_builds(tmp_path, wheel_path):
    # a build killed midway (kill -9, power loss) left a .trees.tmp-* folder that no later build removed
    from focus_detr.partial_files import PartialPath

    (tmp_path / ".trees.tmp-killed" / "train").mkdir(parents=True)
    with PartialPath(tmp_path, prefix=".trees.tmp-", folder=True) as running:  # another build, still going
        build_trees_cache(tmp_path / "trees", wheel_path)
        build_trees_cache(tmp_path / "trees", wheel_path)  # over the first one, which goes too
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([os.path.basename(running.path), "trees"])
    verify_trees_cache(tmp_path / "trees")


def test_the_data_root_expands_a_tilde_as_detectron2_does(monkeypatch):
    # a quoted "~/datasets" was a folder named "~" in the working folder: the cache built there, training looking for
    # it under the home folder
    from focus_detr.data.tree_source import default_data_root

    monkeypatch.setenv("DETECTRON2_DATASETS", "~/datasets")
    assert default_data_root() == Path.home() / "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", "~nosuchuser/datasets")  # as os.path.expanduser: left as written
    assert default_data_root() == Path("~nosuchuser/datasets")
