"""Registering COCO-format datasets from config files, safely more than once per process."""
import os

__all__ = ["register_coco_dataset"]


def _same_files(metadata, json_file, image_root):
    registered = (metadata.get("json_file", None), metadata.get("image_root", None))
    wanted = (json_file, image_root)
    return None not in registered and [os.path.abspath(p) for p in registered] == [os.path.abspath(p) for p in wanted]


def register_coco_dataset(name, json_file, image_root, metadata=None):
    """detectron2's ``register_coco_instances``, except that registering ``name`` again for the same files does
    nothing: a config file that registers its data may be loaded several times in one process (training then
    evaluation, the tools). The same name for other files is an error naming both.

    Args:
        name (str): the dataset name the config's loaders use.
        json_file (str): COCO instances json.
        image_root (str): folder the json's ``file_name`` entries are relative to.
        metadata (dict or None): extra metadata (e.g. ``thing_classes``), as for ``register_coco_instances``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    if name in DatasetCatalog.list():
        registered = MetadataCatalog.get(name)
        if _same_files(registered, json_file, image_root):
            return
        raise ValueError(
            f"dataset {name!r} is already registered for {registered.get('json_file', None)} / "
            f"{registered.get('image_root', None)}, not {json_file} / {image_root}: pick another name"
        )
    register_coco_instances(name, dict(metadata or {}), json_file, image_root)
