"""Reading a COCO json file for :mod:`.coco_json`'s checks: refused before parsing when it is not a regular file
(reading a named pipe waits forever) or not UTF-8 (pycocotools could not read it), and its report kept per file
version so that the train and test loaders and every evaluation check it once."""
import codecs
import functools
import json
import os

from ..special_files import special_file_kind
from .coco_json import CocoJsonReport, coco_json_report

__all__ = ["check_coco_json"]


def _encoding_problem(data):
    """Why the json text ``data`` (bytes) is in an encoding pycocotools cannot read, or None. pycocotools opens the
    file as text in the locale's encoding (UTF-8), where a byte order mark is a json syntax error."""
    if data.startswith(codecs.BOM_UTF8):
        return (
            "the file starts with a UTF-8 byte order mark (BOM), which pycocotools cannot read: save it as UTF-8 "
            "without BOM"
        )
    encoding = json.detect_encoding(data[:4])  # the json module's own guess: UTF-8, -16 or -32, from the first bytes
    if encoding != "utf-8":
        return f"the file is saved as {encoding.upper()}, which pycocotools cannot read: save it as UTF-8 without BOM"
    return None


@functools.lru_cache(maxsize=16)
def _report_of_file(path, size, mtime_ns, image_root):
    # size and mtime_ns are part of the cache key: a json rewritten in the same process is read again
    with open(path, "rb") as f:
        data = f.read()
    problem = _encoding_problem(data)
    if problem:
        return CocoJsonReport(problem=problem)
    try:
        coco = json.loads(data)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return CocoJsonReport(problem=f"not a readable json file: {type(error).__name__}: {error}")
    del data  # the parsed json is large enough on its own
    return coco_json_report(coco, image_root)


def _local_folder(image_root):
    """``image_root`` as an absolute local folder, or None where there is none or it is a URL (not resolvable)."""
    if not image_root or "://" in str(image_root):
        return None
    return os.path.abspath(image_root)


def check_coco_json(json_file, what=None, image_root=None):
    """Raises ValueError naming ``json_file`` (after ``what``, e.g. "dataset 'my_val'") when it cannot be used
    (``problem`` of :func:`coco_json_report`, with ``image_root`` the folder of the images), is not json, is not
    UTF-8 or is not a regular file (a named pipe); OSError when it cannot be read (a folder).

    The report is kept per (path, size, modification time, image root), so checking the same file again in one
    process (train and test loaders, every evaluation) costs a ``stat``.

    Returns:
        CocoJsonReport: the report (the same object while the file is unchanged), for its ``non_finite_box`` and
        the boxes training drops or clips.
    """
    path = os.path.abspath(json_file)
    where = f"{what} ({json_file})" if what else str(json_file)
    try:
        file_stat = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: json file not found") from None
    special = special_file_kind(file_stat.st_mode)
    if special:
        raise ValueError(f"{where}: the json file is {special}, not a regular file; name the COCO json file itself")
    report = _report_of_file(path, file_stat.st_size, file_stat.st_mtime_ns, _local_folder(image_root))
    if report.problem:
        raise ValueError(f"{where}: {report.problem}")
    return report
