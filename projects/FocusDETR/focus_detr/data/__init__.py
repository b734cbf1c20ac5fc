"""Data: the embedded tree-crown demo dataset (build, verify, register) and the DETR dataset mapper."""
from .dataset_mapper import DetrDatasetMapper
from .image_io import read_image
from .trees import TreesCacheError, ensure_trees_cache, register_trees

__all__ = ["DetrDatasetMapper", "TreesCacheError", "ensure_trees_cache", "read_image", "register_trees"]
