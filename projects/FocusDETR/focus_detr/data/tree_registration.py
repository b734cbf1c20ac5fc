"""The embedded tree sets in detectron2's catalogs: ``trees_train`` / ``trees_val`` from the verified cache
(:mod:`.trees` builds and checks it)."""
import os
from typing import Dict, Iterable, Optional

from .tree_source import default_cache_dir
from .trees import CLASS_NAME, SPLITS, ensure_trees_cache, verify_trees_cache

__all__ = ["register_named_tree_sets", "register_trees"]


def register_trees(
    data_root: Optional[os.PathLike] = None, name_prefix: str = "trees", build_if_missing: bool = False
) -> Dict[str, str]:
    """Registers ``<name_prefix>_train`` / ``<name_prefix>_val`` (cache ``<data_root>/trees``) with detectron2's
    ``register_coco_instances``; returns ``{split: dataset name}``.

    The cache is verified first: if it is missing, stale or corrupt this raises ``TreesCacheError`` naming the fix,
    or rebuilds it when ``build_if_missing``. Registering the same names for the same cache again is a no-op.
    """
    # imported here because detectron2 imports torch (seconds); building or checking the cache does not need it
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    cache_dir = default_cache_dir(data_root)
    if build_if_missing:
        ensure_trees_cache(data_root)
    else:
        verify_trees_cache(cache_dir)
    names = {}
    for split in SPLITS:
        name = f"{name_prefix}_{split}"
        json_file = str(cache_dir / f"{split}.json")
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("json_file") != json_file:
                raise ValueError(f"dataset name {name!r} is already registered for another file; pick another name_prefix")
        else:
            register_coco_instances(name, {"thing_classes": [CLASS_NAME]}, json_file, str(cache_dir / "images"))
        names[split] = name
    return names


def register_named_tree_sets(names: Iterable[str]) -> None:
    """:func:`register_trees` when ``names`` (dataset names a config uses) include a tree set not registered yet: for
    a config that names them without registering them, a run's saved ``config.yaml`` (a YAML file runs no code)."""
    from detectron2.data import DatasetCatalog

    if {f"trees_{split}" for split in SPLITS} & set(names) - set(DatasetCatalog.list()):
        register_trees()
