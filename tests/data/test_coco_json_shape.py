"""A COCO json file as read: its top level, lists and ids of the wrong shape, a file that is not json or not a
regular file, each named in one line (not a traceback, not a hang); the check is one linear pass."""
import os
import threading
import time

import pytest

from focus_detr.data.coco_json import coco_json_problem
from focus_detr.data.coco_json_file import check_coco_json


_IMAGE = {"id": 1, "file_name": "a", "height": 8, "width": 8}
_CATEGORIES = [{"id": 1, "name": "a"}]


@pytest.mark.parametrize("coco, why", [
    ([], "the top level is a list, not an object with 'images' and 'annotations'"),
    ({"images": {}}, "'images' is a dict, not a list"),
    ({"images": [3]}, "images entry #0 (0-based) is a int, not an object"),
    ({"images": [{"file_name": "a.png"}]}, "image #0 (0-based, file_name 'a.png') has id None, not a number"),
    ({"images": [{"id": 1, "file_name": None}]}, "image id 1 has file_name None, not a file name"),
    ({"images": [_IMAGE], "categories": _CATEGORIES, "annotations": [{"id": [2], "image_id": 1}]},
     "annotation #0 (0-based) has id [2], not a number; COCO evaluation needs numbers"),
    # each of these passed, then cost the evaluation: id 0 silently (its detection counted as a miss), the others
    # with an error after the whole inference
    ({"images": [_IMAGE], "categories": _CATEGORIES, "annotations": [{"id": 0, "image_id": 1}]},
     "annotation #0 (0-based) has id 0, which COCO evaluation reads as 'matched nothing': a correct detection of it "
     "would count as a miss; number the annotations from 1"),
    ({"images": [_IMAGE], "categories": _CATEGORIES, "annotations": [{"id": "a13", "image_id": 1}]},
     "annotation #0 (0-based) has id 'a13', not a number; COCO evaluation needs numbers"),
    ({"images": [_IMAGE], "categories": _CATEGORIES, "annotations": [{"id": float("nan"), "image_id": 1}]},
     "annotation #0 (0-based) has id nan, not a number; COCO evaluation needs numbers"),
    ({"images": [_IMAGE], "categories": _CATEGORIES, "annotations": [{"id": 10**400, "image_id": 1}]},
     "annotation #0 (0-based) has an id of 401 digits (10000000...), too large for COCO evaluation, which keeps ids "
     "as float64; number the annotations from 1"),
    ({"images": [dict(_IMAGE, id=float("nan"))]}, "image #0 (0-based, file_name 'a') has id nan, not a number"),
    ({"images": [_IMAGE], "categories": _CATEGORIES, "annotations": [{"id": 2, "image_id": True}]},
     "annotation id 2 has image_id True, which no image has; fix the image_id or remove the annotation"),
])
def test_a_json_of_the_wrong_shape_is_named_not_a_traceback(coco, why):
    assert coco_json_problem(coco) == why


def test_a_json_file_that_is_not_json_is_named(tmp_path):
    json_file = tmp_path / "broken.json"
    json_file.write_text('{"images": [')
    with pytest.raises(ValueError) as error:
        check_coco_json(str(json_file), what="dataset 'x'")
    assert str(error.value).startswith(f"dataset 'x' ({json_file}): not a readable json file: JSONDecodeError: ")


def _unblock_a_reader(pipe, after_s, done):
    """Opens ``pipe`` for writing and closes it once a reader waits on it after ``after_s`` seconds (the reader then
    reads an empty file), unless ``done`` is set first: a check that reads a named pipe fails instead of hanging."""
    deadline = time.monotonic() + after_s
    while not done.wait(0.05):
        if time.monotonic() < deadline:
            continue
        try:
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))  # fails while no reader has it open
            return
        except OSError:
            pass


def test_a_named_pipe_as_json_file_is_named_not_read(tmp_path):
    """Reading a named pipe waits for a writer forever: a json path that is not a regular file is refused."""
    pipe = tmp_path / "train.json"
    os.mkfifo(pipe)
    done = threading.Event()
    unblocker = threading.Thread(target=_unblock_a_reader, args=(str(pipe), 5.0, done), daemon=True)
    unblocker.start()
    try:
        with pytest.raises(ValueError) as error:
            check_coco_json(str(pipe), what="dataset 'x'")
    finally:
        done.set()
        unblocker.join()
    assert str(error.value) == (
        f"dataset 'x' ({pipe}): the json file is a named pipe (FIFO), not a regular file; name the COCO json file "
        "itself"
    )


class _CountedId(int):
    """An id that counts the comparisons and hashes made with it."""
    uses = 0

    def __eq__(self, other):
        _CountedId.uses += 1
        return int(self) == other

    def __hash__(self):
        _CountedId.uses += 1
        return int.__hash__(self)


def test_the_check_is_one_linear_pass():
    """10 times the images and annotations cost 10 times the id comparisons (a pairwise check would cost 100
    times): counted, not timed."""
    uses = []
    for size in (200, 2000):
        coco = {
            "images": [{"id": _CountedId(i), "file_name": f"{i}.png", "height": 8, "width": 8} for i in range(size)],
            "annotations": [
                {"id": _CountedId(i + 1), "image_id": _CountedId(i % size), "category_id": 1, "bbox": [1, 1, 2, 2],
                 "area": 4}
                for i in range(3 * size)
            ],
            "categories": _CATEGORIES,
        }
        _CountedId.uses = 0
        assert coco_json_problem(coco) is None
        uses.append(_CountedId.uses)
    assert uses[0] > 0 and uses[1] <= 11 * uses[0]
