"""The image files of a test set, checked before a training run or an ``--eval-only`` inference, whose evaluation
would otherwise meet them only when it reaches them (after all of training, for the one at its end): a path that is
no image file (a ``stat`` each) and a size other than the json's (each file's header, no pixel decoded)."""
from detectron2.data import DatasetCatalog

from .checks import as_list, dataset_errors_in_one_line, json_of
from .dataset_mapper import SIZE_FIX, image_size_problem
from .image_io import SIDES_SWAPPED, exact_orientation, header_size, image_path_problem

__all__ = ["check_image_files"]


def _local_file(record):
    """The record's file name as a str, or None for none or one behind a URL (not checked)."""
    file_name = record.get("file_name", None)
    return None if file_name is None or "://" in str(file_name) else str(file_name)


def _path_problems(records):
    """``(why, missing)`` for each record's file that cannot be opened (:func:`.image_io.image_path_problem`): why,
    naming the file, and whether the evaluation's reader finds nothing there (else it leaves the image out)."""
    problems = []
    for path in filter(None, map(_local_file, records)):
        problem = image_path_problem(path)
        if problem is not None:
            what, missing = problem
            why = (f"image file not found: {path}" + (f" ({what})" if what else "") if missing
                   else f"image {path} is {what}")
            problems.append((why, missing))
    return problems


def _header_sizes_not_given(records):
    """``(record, (height, width, orientation))`` of each record whose ``height`` / ``width`` are not its image's as
    read upright, by the file's header (:func:`.image_io.header_size`); files PIL cannot open are left to the
    reading, which names why."""
    for record in records:
        file_name = _local_file(record)
        size = header_size(file_name) if file_name is not None else None
        if size is not None and image_size_problem(record, *size) is not None:
            yield record, size


def _may_be_turned(record, size):
    """Whether the header ``size`` (height, width, orientation) is the record's swapped while the header has no
    orientation tag that swaps the sides: a PNG's EXIF chunk after its pixels may have one, which only decoding
    them reads."""
    height, width, orientation = size
    return orientation not in SIDES_SWAPPED and (record.get("height"), record.get("width")) == (width, height)


def _size_problem(record, size):
    """The mapper's line (:func:`.dataset_mapper.image_size_problem`) for a record whose header size differs, or
    None where the header missed an orientation tag that swaps the sides (decoded here only for such a size, not
    for every image)."""
    if _may_be_turned(record, size):
        exact = exact_orientation(record["file_name"])
        if exact in SIDES_SWAPPED:
            return None
    return image_size_problem(record, *size)


def check_image_files(names, purpose):
    """Raises ValueError naming the dataset of ``names``, its json and its first image whose file cannot be opened
    (:func:`.image_io.image_path_problem`, a ``stat``), or else whose json ``height`` / ``width`` are not the
    image's as the mapper reads it (its header, with the EXIF orientation applied; the mapper refuses it), and how
    many such images there are. ``purpose``: what would have met it ("the evaluation at the end of training"),
    which stops at a missing file or a size, and leaves out a folder or a link loop (as
    :class:`.image_io.UnreadableImageError`); those are refused here too: a wrong path costs a stat to find, and
    left in, the metrics would count its objects as missed. Images behind a URL are not checked."""
    fix = "fix the dataset's image folder (image_root) or its file names"
    for name in as_list(names):
        with dataset_errors_in_one_line([name]):
            records = DatasetCatalog.get(name)
        problems = _path_problems(records)
        if problems:
            why, missing = problems[0]
            others = f" (and {len(problems) - 1} more of its {len(records)} images)" if len(problems) > 1 else ""
            consequence = "would stop there" if missing else "would leave it out, its objects counted as missed"
            raise ValueError(f"dataset {name!r}{json_of(name)}: {why}{others}; {purpose} {consequence}: {fix}")
        _check_sizes(name, records, purpose)


def _check_sizes(name, records, purpose):
    """:func:`check_image_files`' size check of dataset ``name``'s ``records``."""
    differing = list(_header_sizes_not_given(records))
    for index, (record, size) in enumerate(differing):
        problem = _size_problem(record, size)
        if problem is None:
            continue
        later = differing[index + 1:]
        # the later ones by their headers: one whose EXIF tag only decoding finds may be right
        up_to = "up to " if any(_may_be_turned(*each) for each in later) else ""
        others = f" (and {up_to}{len(later)} more of its {len(records)} images)" if later else ""
        raise ValueError(f"dataset {name!r}{json_of(name)}: {problem}{others}; {purpose} would stop there: "
                         f"{SIZE_FIX}")
