"""Data: the embedded tree-crown demo dataset (build, verify, register)."""
from .trees import TreesCacheError, ensure_trees_cache, register_trees

__all__ = ["TreesCacheError", "ensure_trees_cache", "register_trees"]
