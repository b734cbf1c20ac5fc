"""Registering COCO-format datasets from config files, safely more than once per process."""
import functools
import os
from collections.abc import Mapping, Sequence

__all__ = ["register_coco_dataset"]

_WHAT = "register_coco_dataset"
# metadata keys the arguments set: given in ``metadata`` too, detectron2 failed with "multiple values for keyword"
_ARGUMENT_KEYS = ("json_file", "image_root")
_NOT_SET = object()


def _is_url(path):
    return "://" in path


def _checked_name(name):
    if not isinstance(name, str):
        raise TypeError(f"{_WHAT}: name must be a str (the dataset name the data loaders use), got "
                        f"{type(name).__name__} {name!r}")
    if not name.strip():
        raise ValueError(f"{_WHAT}: name is empty; give the dataset name the data loaders use")
    return name


def _checked_path(argument, path):
    """``path`` (str or os.PathLike) as an absolute str; a URL (``scheme://``) as given. Absolute because detectron2
    reads the files only when the dataset is first loaded: a relative path would mean whatever it means in the
    working folder of that moment, and one registered from two folders would look like the same files."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"{_WHAT}: {argument} must be a path (str or os.PathLike), got {type(path).__name__} {path!r}")
    if not path:
        raise ValueError(f"{_WHAT}: {argument} is empty")
    return path if _is_url(path) else os.path.abspath(path)


def _checked_metadata(metadata):
    """``metadata`` as a new dict; TypeError / ValueError naming the argument otherwise."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"{_WHAT}: metadata must be a dict (e.g. {{'thing_classes': [...]}}) or None, got "
                        f"{type(metadata).__name__}")
    given = [key for key in _ARGUMENT_KEYS if key in metadata]
    if given:
        raise ValueError(f"{_WHAT}: metadata sets {', '.join(given)}; pass the file(s) as the {given[0]} argument")
    metadata = dict(metadata)
    classes = metadata.get("thing_classes", None)
    if isinstance(classes, Sequence) and not isinstance(classes, (str, list)):
        # detectron2 sets the json's names as a list when it loads the dataset, and refused the same names as a
        # tuple ("cannot be set to a different value!")
        metadata["thing_classes"] = list(classes)
    return metadata


def _real(path):
    """What a path names, whatever its spelling: relative, ``a/../b``, a linked folder; a URL as it is."""
    path = os.fspath(path)
    return path if _is_url(path) else os.path.realpath(path)


def _same_files(metadata, json_file, image_root):
    registered = (metadata.get("json_file", None), metadata.get("image_root", None))
    return None not in registered and [_real(p) for p in registered] == [_real(p) for p in (json_file, image_root)]


def _equal(a, b):
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # e.g. numpy arrays of several values: "truth value is ambiguous"
        return a is b


def _metadata_difference(registered, metadata):
    """The first key of ``metadata`` whose value the registered metadata does not have, as "key=registered value,
    not given value" ("not set" when it has none), or None. Keys the call leaves out are not compared: detectron2
    adds ``thing_classes`` and the category id map when the dataset is first loaded."""
    for key, value in metadata.items():
        old = registered.get(key, _NOT_SET)
        if old is _NOT_SET or not _equal(old, value):
            return f"{key}={'not set' if old is _NOT_SET else repr(old)}, not {value!r}"
    return None


def _load_registered(name, json_file, image_root):
    """detectron2's ``load_coco_json`` for dataset ``name``, after checks that name the dataset: its json is read
    only now, when it may have gone since registration (or never existed: registering does not read it); and
    ``thing_classes`` given in the metadata must be the json's (detectron2's assertion when it sets the json's
    was a traceback naming neither)."""
    from detectron2.data.datasets import load_coco_json

    from .checks import check_declared_classes

    if not _is_url(json_file):
        if not os.path.exists(json_file):
            raise FileNotFoundError(f"dataset {name!r}: json file {json_file} not found")
        if not os.path.isfile(json_file):  # a folder; or a named pipe, whose reading would wait forever
            raise ValueError(f"dataset {name!r}: json file {json_file} is not a regular file; name the COCO json "
                             "file itself")
        check_declared_classes([name])  # a stat where the loaders checked the json just before (cached)
    return load_coco_json(json_file, image_root, name)


def register_coco_dataset(name, json_file, image_root, metadata=None):
    """detectron2's ``register_coco_instances``, except that registering ``name`` again for the same files and
    metadata does nothing: a config file that registers its data may be loaded several times in one process
    (training then evaluation, the tools). The same name for other files, or with metadata of other values, is an
    error naming both. Arguments of the wrong type are a one-line TypeError / ValueError.

    The files are not read here (so a config can be loaded, e.g. for inference, where its data is absent), but
    relative paths are resolved now, against the current working folder, and stored absolute. Loading the dataset
    (``DatasetCatalog.get``) with its json missing is a FileNotFoundError naming the dataset.

    Args:
        name (str): the dataset name the config's loaders use.
        json_file (str or os.PathLike): COCO instances json (a URL is passed to detectron2 as it is).
        image_root (str or os.PathLike): folder the json's ``file_name`` entries are relative to.
        metadata (dict or None): extra metadata (e.g. ``thing_classes``), as for ``register_coco_instances``; must not
            set ``json_file`` / ``image_root`` (the arguments do). ``thing_classes`` (a list or tuple, stored as a
            list) must be the json's category names sorted by id, which detectron2 sets when it loads the dataset:
            other names or another order are refused then, naming both. When ``name`` is registered already, a key given
            here with another value than the registered one is refused; keys left out are not compared.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = _checked_name(name)
    json_file, image_root = _checked_path("json_file", json_file), _checked_path("image_root", image_root)
    metadata = _checked_metadata(metadata)
    if name in DatasetCatalog.list():
        registered = MetadataCatalog.get(name)
        if not _same_files(registered, json_file, image_root):
            raise ValueError(
                f"dataset {name!r} is already registered for {registered.get('json_file', None)} / "
                f"{registered.get('image_root', None)}, not {json_file} / {image_root}: pick another name"
            )
        difference = _metadata_difference(registered, metadata)
        if difference:
            raise ValueError(f"dataset {name!r} is already registered with {difference}: register the same "
                             "metadata, or pick another name")
        return
    # what register_coco_instances does, with a loader whose missing-json error names the dataset
    DatasetCatalog.register(name, functools.partial(_load_registered, name, json_file, image_root))
    MetadataCatalog.get(name).set(**{"evaluator_type": "coco", **metadata, "json_file": json_file,
                                     "image_root": image_root})
