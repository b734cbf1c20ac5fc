"""Checks that a COCO json's ids and file names mean one thing each, which detectron2 and pycocotools assume
without checking.

pycocotools indexes images by id, so two images with one id silently become one (the last), and the annotations of
both are scored against it: ``--eval-only`` on such a json (issue 20) reported AP 0.130 where the same data with
distinct ids gives 0.075. An annotation whose ``image_id`` no image has is dropped without a word, and an image
listed twice is trained on and scored twice. All are refused here, naming the json and the id, in one pass over the
json.
"""
import functools
import json
import os

__all__ = ["check_coco_json", "coco_json_problem"]


def _usable_id(value):
    # bool is an int subclass, and True == 1 would make it collide with image 1
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def _list_problem(coco, key):
    """Why ``coco[key]`` (absent: empty) is not a list of objects, or None."""
    entries = coco.get(key, [])
    if not isinstance(entries, list):
        return f"'{key}' is a {type(entries).__name__}, not a list"
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            return f"{key} entry #{index} (0-based) is a {type(entry).__name__}, not an object"
    return None


def _image_problem(images):
    ids, files = {}, {}
    for index, image in enumerate(images):
        image_id, file_name = image.get("id"), image.get("file_name")
        if not _usable_id(image_id):
            return f"image #{index} (0-based, file_name {file_name!r}) has id {image_id!r}, not a number"
        if image_id in ids:
            return (
                f"image id {image_id} is used by two images ({ids[image_id]!r} and {file_name!r}); "
                "image ids must be unique, or their annotations are scored against one of them"
            )
        ids[image_id] = file_name
        if not isinstance(file_name, str) or not file_name:
            return f"image id {image_id} has file_name {file_name!r}, not a file name"
        # "a.png" and "./a.png" are one file
        key = os.path.normpath(file_name)
        if key in files:
            return (
                f"images {files[key]} and {image_id} both name the file {file_name!r}; list each image once "
                "(twice, it is trained on and scored twice)"
            )
        files[key] = image_id
    return None


def _annotation_problem(annotations, image_ids):
    seen = set()
    for index, annotation in enumerate(annotations):
        annotation_id = annotation.get("id")
        if not _usable_id(annotation_id):
            return f"annotation #{index} (0-based) has id {annotation_id!r}, not a number"
        if annotation_id in seen:
            return f"annotation id {annotation_id} is used by two annotations; annotation ids must be unique"
        seen.add(annotation_id)
        image_id = annotation.get("image_id")
        if not _usable_id(image_id) or image_id not in image_ids:
            return (
                f"annotation id {annotation_id} has image_id {image_id!r}, which no image has; fix the image_id or "
                "remove the annotation"
            )
    return None


def coco_json_problem(coco):
    """What is wrong with the ids and file names of the parsed COCO json ``coco`` (one line, without the file's
    name), or None. Linear in the number of images and annotations.

    Refused: a top level that is not an object; ``images`` / ``annotations`` that are not lists of objects; an id
    that is not a number or string; duplicate image ids; two images naming one file; duplicate annotation ids; an
    annotation whose ``image_id`` no image has.
    """
    if not isinstance(coco, dict):
        return f"the top level is a {type(coco).__name__}, not an object with 'images' and 'annotations'"
    problem = _list_problem(coco, "images") or _list_problem(coco, "annotations")
    if problem:
        return problem
    images = coco.get("images", [])
    return _image_problem(images) or _annotation_problem(coco.get("annotations", []), {i["id"] for i in images})


@functools.lru_cache(maxsize=16)
def _problem_of_file(path, size, mtime_ns):
    # size and mtime_ns are part of the cache key: a json rewritten in the same process is read again
    try:
        with open(path, "rb") as f:
            coco = json.load(f)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"not a readable json file: {type(error).__name__}: {error}"
    return coco_json_problem(coco)


def check_coco_json(json_file, what=None):
    """Raises ValueError naming ``json_file`` (after ``what``, e.g. "dataset 'my_val'") when its ids or file names
    are inconsistent (:func:`coco_json_problem`) or it is not json; OSError when it cannot be read.

    The verdict is kept per (path, size, modification time), so checking the same file again in one process (train
    and test loaders, every evaluation) costs a ``stat``.
    """
    path = os.path.abspath(json_file)
    stat = os.stat(path)
    problem = _problem_of_file(path, stat.st_size, stat.st_mtime_ns)
    if problem:
        where = f"{what} ({json_file})" if what else str(json_file)
        raise ValueError(f"{where}: {problem}")
