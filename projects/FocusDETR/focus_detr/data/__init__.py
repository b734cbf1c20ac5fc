"""Data: the embedded tree-crown demo dataset (build, verify, register), checked dataset loading, image reading and
the DETR dataset mapper."""
from .checks import (
    DatasetClassesError,
    check_dataset_jsons,
    check_declared_classes,
    check_evaluable,
    check_finite_boxes,
    check_num_classes,
    class_difference,
    dataset_classes,
    declared_category_ids,
    declared_classes,
    get_checked_dataset_dicts,
)
from .dataset_mapper import DetrDatasetMapper
from .image_checks import check_image_files
from .image_io import UnreadableImageError, expand_globs, image_files, open_image, read_image
from .registration import register_coco_dataset
from .tree_registration import register_trees
from .tree_source import TreesCacheError
from .trees import ensure_trees_cache

__all__ = [
    "DatasetClassesError",
    "DetrDatasetMapper",
    "TreesCacheError",
    "UnreadableImageError",
    "check_dataset_jsons",
    "check_declared_classes",
    "check_evaluable",
    "check_finite_boxes",
    "check_image_files",
    "check_num_classes",
    "class_difference",
    "dataset_classes",
    "declared_category_ids",
    "declared_classes",
    "expand_globs",
    "ensure_trees_cache",
    "get_checked_dataset_dicts",
    "image_files",
    "open_image",
    "read_image",
    "register_coco_dataset",
    "register_trees",
]
