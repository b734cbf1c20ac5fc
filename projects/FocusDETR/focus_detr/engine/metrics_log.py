"""detectron2's ``metrics.json`` across a resume. Its JSONWriter appends one JSON line per logged iteration; a crash or
a full disk can leave the last line cut short, without its newline, and the resumed run's writer would append its
first record onto it, merging the two into one line that is not JSON. :func:`cut_incomplete_last_line` removes such a
line before the writer opens the file. ``focus_detr.analysis.training_curves`` treats the same line the same way: the
text after the last newline, when it is not whole JSON, is an incomplete line and is skipped with a warning."""
import json
import logging
import os

from .checkpoint import atomic_write

__all__ = ["METRICS_FILE", "cut_incomplete_last_line", "drop_records_from", "is_whole_json"]

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
_CHUNK_BYTES = 1 << 16


def is_whole_json(text) -> bool:
    """Whether ``text`` (str or bytes, a line without its newline) is one complete JSON value."""
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # ValueError: also bytes that are not UTF-8, cut inside a character
        return False
    return True


def _start_of_last_line(f) -> int:
    """The offset after the last newline of the binary file ``f`` (0 when it has none), read backwards in chunks: a
    long run's log need not be read whole."""
    position = f.seek(0, os.SEEK_END)
    while position > 0:
        start = max(0, position - _CHUNK_BYTES)
        f.seek(start)
        newline = f.read(position - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def cut_incomplete_last_line(output_dir: str) -> None:
    """Before a writer appends to ``output_dir``'s metrics.json (a resumed run's): a last line without its newline is
    cut off when it is not whole JSON (a write cut short; one warning says so), and given its newline when it is, so
    the appended records start on a line of their own. Nothing happens without the file."""
    path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return
    with open(path, "r+b") as f:
        start = _start_of_last_line(f)
        f.seek(start)
        last_line = f.read()
        if not last_line:
            return
        if is_whole_json(last_line):
            f.write(b"\n")
            return
        f.truncate(start)
    logger.warning(f"Cut the incomplete last line ({len(last_line)} bytes, left by an interrupted write) off {path}, "
                   "so the resumed run's records start on a line of their own")


def _record(line: bytes):
    """The metrics record (a dict with an int ``iteration``) on ``line``, or None for a line that is not one."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    iteration = record.get("iteration") if isinstance(record, dict) else None
    return record if isinstance(iteration, int) and not isinstance(iteration, bool) else None


def drop_records_from(output_dir: str, start_iter: int, keep_evaluations_at_start: bool = False):
    """Removes from ``output_dir``'s metrics.json the records of iterations ``start_iter`` and later: a run killed
    after its last checkpoint logged iterations that the resume (from ``start_iter``) does again, a run killed before
    its first checkpoint all those a new run does again, and each would otherwise appear twice, with other values
    (detectron2's smoothing window restarts). Lines that are not such a record stay. Written atomically.

    ``keep_evaluations_at_start``: the records of ``start_iter`` that hold no training metrics (no ``total_loss``)
    stay: a finished run's final evaluation, which detectron2 records at its max_iter, where a longer run resumed from
    its last checkpoint starts.

    Returns (how many records were removed, whether one of them was a training record of ``start_iter``: an earlier
    attempt went on from there)."""
    path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return 0, False
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)

    def redone(record):
        if record is None or record["iteration"] < start_iter:
            return False
        return not (keep_evaluations_at_start and record["iteration"] == start_iter and "total_loss" not in record)

    records = [_record(line) for line in lines]
    kept = [line for line, record in zip(lines, records) if not redone(record)]
    removed = len(lines) - len(kept)
    if removed:
        atomic_write(path, lambda f: f.writelines(kept))
        logger.info(f"Removed the {removed} records of iterations {start_iter} and later from {path}: this run logs "
                    "them again")
    return removed, any(redone(r) and r["iteration"] == start_iter and "total_loss" in r for r in records)
