#!/usr/bin/env python
"""Prepares the embedded tree-crown demo dataset (``trees_train`` / ``trees_val``).

Downloads the hash-pinned ``deepforest`` data wheel (requirements/demo-data.txt) if it is not there yet, and builds
``<data root>/trees`` (data root: ``--data-root``, else ``$DETECTRON2_DATASETS``, else ``<repo>/datasets``) unless a
verified cache is already there. Prints the dataset statistics. Takes well under a second when nothing is to do.
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import sys
import time

from focus_detr.data.tree_source import default_cache_dir, download_source_wheel
from focus_detr.data.trees import build_trees_cache, ensure_trees_cache
from focus_detr.engine.cli import run_reporting_errors


def format_stats(manifest: dict) -> str:
    columns = ["source_images", "tiles", "source_boxes", "boxes", "source_boxes_in_no_tile", "degenerate_source_boxes"]
    lines = ["split  " + "  ".join(columns)]
    for split, stats in manifest["stats"].items():
        lines.append(f"{split:<6} " + "  ".join(f"{stats[c]:>{len(c)}}" for c in columns))
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder holding trees/ and downloads/")
    parser.add_argument("--force", action="store_true", help="rebuild the cache even if it verifies")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    start = time.perf_counter()
    if args.force:
        build_trees_cache(default_cache_dir(args.data_root), download_source_wheel(args.data_root))
    manifest = ensure_trees_cache(args.data_root)
    print(f"[trees] dataset ready in {default_cache_dir(args.data_root)} ({time.perf_counter() - start:.1f} s)")
    print(format_stats(manifest))
    return 0


if __name__ == "__main__":
    # errors in one line; SIGTERM / SIGHUP interrupt like Ctrl-C, so a build's temporary folder is removed
    sys.exit(run_reporting_errors(main))
