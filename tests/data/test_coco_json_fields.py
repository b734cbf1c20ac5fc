"""A COCO json's fields must be what detectron2, its training mapper and pycocotools read: a missing or mistyped
field, a box of negative size or beyond float32, two categories with one id, a json saved with a BOM or as UTF-16
stop with one line naming the dataset, the json and the entry (not a traceback, not a wrong class count, not a box
silently turned into another). Boxes that training drops or clips while the COCO evaluator scores them as written
are legal, and warned about once per dataset."""
import json
import os
import sys

import pytest

from focus_detr.data import check_dataset_jsons, check_evaluable, get_checked_dataset_dicts, register_coco_dataset
from focus_detr.data.coco_json import coco_json_problem

from coco_edits import (AREA, BOX, first_annotation, first_annotation_without, first_bbox, first_image,
                        first_image_without)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine"))
from cli_output import logged_warnings  # noqa: E402

IMAGE = "image im0.png (image_id 10)"


def _coco():
    """Two 40 x 30 images (ids 10, 11) with one box each (annotation ids 100, 101), one category (id 1)."""
    return {
        "images": [{"id": 10 + i, "file_name": f"im{i}.png", "height": 30, "width": 40} for i in range(2)],
        "annotations": [
            {"id": 100 + i, "image_id": 10 + i, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100.0, "iscrowd": 0}
            for i in range(2)
        ],
        "categories": [{"id": 1, "name": "a"}],
    }


def _register(tmp_path, name, edit=None, text=None):
    """Registers ``name`` for the json of :func:`_coco` changed by ``edit(coco)``, or for the json ``text`` (str or
    bytes) as written; returns the json's path."""
    coco = _coco()
    if edit is not None:
        edit(coco)
    json_file = tmp_path / f"{name}.json"
    if text is None:
        text = json.dumps(coco)
    (json_file.write_bytes if isinstance(text, bytes) else json_file.write_text)(text)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    register_coco_dataset(name, str(json_file), str(tmp_path))
    return json_file


def _no_categories(coco):
    del coco["categories"]


def _duplicate_category_id(coco):
    coco["categories"].append({"id": 1, "name": "b"})


def _string_image_id(coco):
    # a string id next to a number: detectron2 sorts the ids, and they do not compare
    coco["images"][1]["id"] = coco["annotations"][1]["image_id"] = "b"


MALFORMED = {
    "negative_width": (first_bbox([10, 10, -20, 15]), f"annotation id 100 of {IMAGE} has bbox [10, 10, -20, 15]: "
                       f"width and height must be >= 0 (a bbox is [x, y, width, height], not two corners){BOX}"),
    "negative_height": (first_bbox([10, 10, 5, -1.5]), f"annotation id 100 of {IMAGE} has bbox [10, 10, 5, -1.5]: "
                        f"width and height must be >= 0 (a bbox is [x, y, width, height], not two corners){BOX}"),
    "huge_width": (first_bbox([10, 10, 1e300, 15]), f"annotation id 100 of {IMAGE} has bbox [10, 10, 1e+300, 15]: "
                   f"a coordinate is beyond float32's range (3.4e38), so no usable number for training{BOX}"),
    "huge_integer": (first_bbox([10, 10, 10**400, 15]), f"annotation id 100 of {IMAGE} has bbox [10, 10, <an integer "
                     f"of 401 digits>, 15]: a coordinate is beyond float32's range (3.4e38), so no usable number for "
                     f"training{BOX}"),
    "no_bbox": (first_annotation_without("bbox"), f"annotation id 100 of {IMAGE} has no 'bbox'; give each annotation "
                "its box [x, y, width, height]"),
    "null_bbox": (first_bbox(None), f"annotation id 100 of {IMAGE} has bbox None: a bbox is a list of 4 numbers "
                  f"[x, y, width, height]{BOX}"),
    "three_numbers": (first_bbox([10, 10, 20]), f"annotation id 100 of {IMAGE} has bbox [10, 10, 20]: a bbox is a "
                      f"list of 4 numbers [x, y, width, height]{BOX}"),
    "string_number": (first_bbox([10, 10, "20", 15]), f"annotation id 100 of {IMAGE} has bbox [10, 10, '20', 15]: a "
                      f"bbox is 4 numbers [x, y, width, height], and '20' is a string{BOX}"),
    "no_category_id": (first_annotation_without("category_id"), "annotation id 100 of image_id 10 has no "
                       "category_id; give each annotation one"),
    "no_categories": (_no_categories, "no categories: list the dataset's classes in the json's 'categories'"),
    "duplicate_category_id": (_duplicate_category_id, "category id 1 is used by two categories ('a' and 'b'); "
                              "category ids must be unique (detectron2 would count two classes, the COCO evaluator "
                              "one)"),
    "no_height": (first_image_without("height"), "image id 10 ('im0.png') has no 'height'; give each image its "
                  "height and width"),
    "no_width": (first_image_without("width"), "image id 10 ('im0.png') has no 'width'; give each image its height "
                 "and width"),
    "string_height": (first_image(height="30"), "image id 10 ('im0.png') has height '30' (a string): height and "
                      "width must be positive integers, the image's size in pixels"),
    "zero_width": (first_image(width=0), "image id 10 ('im0.png') has width 0: height and width must be positive "
                   "integers, the image's size in pixels"),
    # a crowd to the mapper and to pycocotools alike, so silently never trained on
    "string_iscrowd": (first_annotation(iscrowd="0"), "annotation id 100 of image_id 10 has iscrowd '0' (a string): "
                       "iscrowd is 0 or 1"),
    "iscrowd_two": (first_annotation(iscrowd=2), "annotation id 100 of image_id 10 has iscrowd 2: iscrowd is 0 or 1"),
    "mixed_image_ids": (_string_image_id, "image ids mix numbers and strings (image id 10 and image id 'b'); give all "
                        "images ids of one kind, numbers as in COCO"),
    # 1.0 is no category id to detectron2's id map; "not among the json's categories (ids 1)" only puzzled
    "float_category_id": (first_annotation(category_id=1.0), "annotation id 100 of image_id 10 has category_id 1.0, "
                          "not an integer; give it the integer id of one of the json's categories (ids 1)"),
}

# pycocotools counts an object by its area, not its box: these lowered AP, made every metric NaN or failed the
# evaluation after the whole inference
OUTSIDE_RANGE = ": COCO evaluation ignores objects whose area is outside 0 to 1e10, so this one would not count"
BAD_AREA = {
    "string_area": (first_annotation(area="100"), f"annotation id 100 of {IMAGE} has area '100' (a string): an area "
                    f"is a number{AREA}"),
    "nan_area": (first_annotation(area=float("nan")), f"annotation id 100 of {IMAGE} has area nan: an area is a "
                 f"finite number{AREA}"),
    "negative_area": (first_annotation(area=-1), f"annotation id 100 of {IMAGE} has area -1{OUTSIDE_RANGE}{AREA}"),
    "huge_area": (first_annotation(area=1e11), f"annotation id 100 of {IMAGE} has area 100000000000.0"
                  f"{OUTSIDE_RANGE}{AREA}"),
}
MALFORMED.update(BAD_AREA)

# detectron2's loader stops with a traceback on these (an assertion, TypeErrors), though Focus-DETR reads none of them
SEGMENTATION = "; fix the segmentation, or remove it for box-only data"
DROPPED = (", where a polygon is a list of at least 6 numbers [x1, y1, x2, y2, x3, y3, ...]; detectron2 drops an "
           "annotation without a valid polygon, box included, which the COCO evaluator still scores" + SEGMENTATION)
MALFORMED.update({
    "ignore": (first_annotation(ignore=1), f"annotation id 100 of {IMAGE} has ignore 1, which detectron2's loader "
               "does not support (an assertion); remove the field, or mark a region to ignore with iscrowd 1"),
    "string_keypoint": (first_annotation(keypoints=[3, "a", 2]), f"annotation id 100 of {IMAGE} has keypoints "
                        "holding 'a' (a string) at #1: keypoints are a list of numbers [x1, y1, v1, x2, y2, v2, ...], "
                        "and detectron2's loader fails on anything else; fix them, or remove them (Focus-DETR does not "
                        "use them)"),
    "rle_size": (first_annotation(segmentation={"counts": [1, 2, 3], "size": [5]}), f"annotation id 100 of {IMAGE} "
                 "has an RLE segmentation that detectron2's loader cannot read: its 'size' is [5], not [height, width] "
                 f"(2 integers >= 0){SEGMENTATION}"),
    "rle_counts": (first_annotation(segmentation={"counts": [1, -2], "size": [30, 40]}), f"annotation id 100 of "
                   f"{IMAGE} has an RLE segmentation that detectron2's loader cannot read: its 'counts' is [1, -2], "
                   f"not a string or a list of integers from 0 to 2**32 - 1{SEGMENTATION}"),
    # detectron2 silently drops these annotations, box included, which the evaluator still scores
    "short_polygon": (first_annotation(segmentation=[[5, 5, 15, 5]]), f"annotation id 100 of {IMAGE} has an invalid "
                      f"segmentation: polygon #0 has 4 values{DROPPED}"),
    "empty_polygon": (first_annotation(segmentation=[[]]), f"annotation id 100 of {IMAGE} has an invalid "
                      f"segmentation: polygon #0 has 0 values{DROPPED}"),
    "odd_polygon": (first_annotation(segmentation=[[5, 5, 15, 5, 15, 15, 5]]), f"annotation id 100 of {IMAGE} has an "
                    f"invalid segmentation: polygon #0 has 7 values{DROPPED}"),
    "string_in_polygon": (first_annotation(segmentation=[[5, 5, 15, 5, 15, "15"]]), f"annotation id 100 of {IMAGE} "
                          f"has an invalid segmentation: polygon #0 holds '15' (a string) at #5{DROPPED}"),
    "string_segmentation": (first_annotation(segmentation="5 5 15 5 15 15"), f"annotation id 100 of {IMAGE} has an "
                            f"invalid segmentation: it is a string ('5 5 15 5 15 15'){DROPPED}"),
})


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_field_is_one_line_naming_dataset_json_and_entry(tmp_path, case):
    edit, why = MALFORMED[case]
    json_file = _register(tmp_path, "fields", edit)
    for check in (check_dataset_jsons, get_checked_dataset_dicts):
        with pytest.raises(ValueError) as error:
            check("fields")
        assert str(error.value) == f"dataset 'fields' ({json_file}): {why}"


@pytest.mark.parametrize("encoding, why", [
    ("utf-8-sig", "the file starts with a UTF-8 byte order mark (BOM), which pycocotools cannot read: save it as "
                  "UTF-8 without BOM"),
    ("utf-16", "the file is saved as UTF-16, which pycocotools cannot read: save it as UTF-8 without BOM"),
])
def test_a_json_saved_with_a_bom_or_as_utf16_is_named_with_the_fix(tmp_path, encoding, why):
    json_file = _register(tmp_path, "encoded", text=json.dumps(_coco()).encode(encoding))
    with pytest.raises(ValueError) as error:
        get_checked_dataset_dicts("encoded")
    assert str(error.value) == f"dataset 'encoded' ({json_file}): {why}"


def test_valid_fields_pass_including_sub_pixel_boxes_and_integral_float_sizes(tmp_path):
    def edit(coco):
        coco["images"][0].update(height=30.0, width=40.0)  # as some tools write them: detectron2 compares with ==
        coco["annotations"][0].update(bbox=[5.25, 5.5, 0.5, 0.25], area=0.125)  # tiny but inside: trained and scored
        # fields as COCO and its tools write them: a pixel-count area a little above a float box (rounding), polygons,
        # an empty segmentation, keypoints, ignore 0, a crowd RLE
        coco["annotations"][0].update(segmentation=[], keypoints=[6, 7, 2, 0, 0, 0], ignore=0)
        coco["annotations"][1].update(area=110, segmentation=[[5, 5, 15, 5, 15, 15.5], [5, 5, 6, 5, 6, 6]])
        coco["annotations"].append(dict(coco["annotations"][1], id=102, iscrowd=1, area=100,
                                        segmentation={"counts": [205, 10, 985], "size": [30, 40]}))

    with logged_warnings("focus_detr.data.box_warnings") as messages:
        _register(tmp_path, "valid_fields", edit)
        assert len(get_checked_dataset_dicts("valid_fields")) == 2
    assert messages == []


def test_an_area_that_does_not_fit_its_box_is_warned_about(tmp_path):
    # only the size breakdown (APs / APm / APl) counts it elsewhere; 0 for a box of positive size, or larger than the
    # box beyond a pixel of rounding (a mask's pixel count exceeds a polygon's float box by up to that)
    for area in (0, 400.0):
        name = f"misfit_area_{int(area)}"
        (tmp_path / name).mkdir()
        json_file = _register(tmp_path / name, name, first_annotation(area=area))
        with logged_warnings("focus_detr.data.box_warnings") as messages:
            check_dataset_jsons(name)
        assert messages == [
            f"dataset '{name}' ({json_file}): 1 annotation whose area does not fit the box (0 for a box of positive "
            "size, or larger than the box), e.g. annotation id 100 of image im0.png (image_id 10), bbox [5, 5, 10, "
            "10] in a 40 x 30 image: COCO evaluation sorts objects into small / medium / large by their area, so "
            f"APs / APm / APl count them as another size{AREA}"
        ]
    (tmp_path / "rounding").mkdir()
    _register(tmp_path / "rounding", "area_within_rounding", first_annotation(area=121.0))
    with logged_warnings("focus_detr.data.box_warnings") as messages:
        check_dataset_jsons("area_within_rounding")
    assert messages == []


def test_a_missing_area_is_refused_only_where_coco_evaluation_reads_it(tmp_path):
    # pycocotools failed with KeyError: 'area' after the whole inference; training does not read it
    json_file = _register(tmp_path, "no_area", first_annotation_without("area"))
    check_dataset_jsons("no_area")
    with pytest.raises(ValueError) as error:
        check_evaluable("no_area")
    assert str(error.value) == (
        f"dataset 'no_area' ({json_file}): 1 annotation without an 'area', e.g. annotation id 100 of image im0.png "
        "(image_id 10), bbox [5, 5, 10, 10] in a 40 x 30 image, which COCO evaluation needs to score this test set"
        f"{AREA}"
    )


def _boxes_training_drops_or_clips(coco):
    image = {"height": 30, "width": 40}
    coco["images"] = [dict(image, id=10 + i, file_name=f"im{i}.png") for i in range(7)]
    bboxes = [
        [5, 5, 0, 10],  # zero width: dropped by training
        [50, 5, 10, 10],  # right of the 40-pixel-wide image: dropped
        [-20, -20, 10, 10],  # above and left of it: dropped
        [30, 20, 20, 20],  # reaches 10 pixels out: clipped
        [0, 0, 40.5, 30],  # half a pixel out (rounding): fine
        [5, 5, 10, 10],
        [50, 5, 10, 10],  # outside too, but a crowd box: neither trained on nor an object to find
    ]
    coco["annotations"] = [
        {"id": 100 + i, "image_id": 10 + i, "category_id": 1, "bbox": bbox, "area": 1.0, "iscrowd": int(i == 6)}
        for i, bbox in enumerate(bboxes)
    ]


def test_boxes_training_drops_or_clips_are_warned_about_once_per_dataset(tmp_path):
    json_file = _register(tmp_path, "dropped_boxes", _boxes_training_drops_or_clips)
    where = f"dataset 'dropped_boxes' ({json_file})"
    with logged_warnings("focus_detr.data.box_warnings") as messages:
        dicts = get_checked_dataset_dicts("dropped_boxes", filter_empty=False)
        check_dataset_jsons("dropped_boxes")  # checked again (train loader, evaluations): no second warning
        get_checked_dataset_dicts("dropped_boxes")
    assert sum(len(record["annotations"]) for record in dicts) == 7  # legal: loaded, left to the mapper
    assert messages == [
        f"{where}: 3 boxes with no area inside the image (zero width or height, or outside it), e.g. annotation id 100 "
        "of image im0.png (image_id 10), bbox [5, 5, 0, 10] in a 40 x 30 image: training ignores such boxes, but the "
        "COCO evaluator counts each as an object to find, which lowers recall and AP; fix or remove them",
        f"{where}: 1 box reaching more than 1 pixel outside the image, e.g. annotation id 103 of image im3.png "
        "(image_id 13), bbox [30, 20, 20, 20] in a 40 x 30 image: training clips such boxes to the image, but the "
        "COCO evaluator scores them as written, so even a perfect detection of the visible part matches them with a "
        "lower IoU",
    ]


def _corner_boxes(coco):
    image = {"height": 30, "width": 40}
    coco["images"] = [dict(image, id=10 + i, file_name=f"im{i}.png") for i in range(3)]
    corners = [[2, 3, 12, 9], [20, 10, 38, 29], [5, 5, 30, 28]]  # [x1, y1, x2, y2]: the last two reach out as xywh
    coco["annotations"] = [
        {"id": 100 + i, "image_id": 10 + i, "category_id": 1, "bbox": bbox, "area": 1.0, "iscrowd": 0}
        for i, bbox in enumerate(corners)
    ]


def test_boxes_written_as_corners_are_named_as_such(tmp_path):
    # converted from Pascal VOC without turning corners into sizes: only "clipped to the image" was said
    json_file = _register(tmp_path, "corner_boxes", _corner_boxes)
    with logged_warnings("focus_detr.data.box_warnings") as messages:
        check_dataset_jsons("corner_boxes")
    assert len(messages) == 1 and messages[0].startswith(
        f"dataset 'corner_boxes' ({json_file}): 2 boxes reaching more than 1 pixel outside the image")
    assert messages[0].endswith(
        "; every box of the json, read as corners [x1, y1, x2, y2], lies inside its image: if they are corners (as "
        "in Pascal VOC), write them as COCO's [x, y, width, height], width = x2 - x1 and height = y2 - y1")


def _every_polygon_short(coco):
    for annotation in coco["annotations"]:
        annotation["segmentation"] = [[5, 5, 15, 5]]


def test_annotations_detectron2_would_all_drop_are_named_not_called_crowd(tmp_path):
    """detectron2 drops annotations whose polygons are all invalid, boxes included: with every one dropped, training
    used to stop with "no image has a box that is not crowd", which was not the problem."""
    json_file = _register(tmp_path, "dropped_polygons", _every_polygon_short)
    with pytest.raises(ValueError) as error:
        get_checked_dataset_dicts("dropped_polygons", filter_empty=True)
    assert str(error.value) == (
        f"dataset 'dropped_polygons' ({json_file}): annotation id 100 of {IMAGE} has an invalid segmentation: polygon "
        f"#0 has 4 values{DROPPED}"
    )


def _boxes_in_fractions_of_the_image(coco):
    for annotation in coco["annotations"]:
        annotation.update(bbox=[0.125, 0.25, 0.25, 0.5], area=0.125)  # as YOLO-style tools write them


def test_boxes_all_under_a_pixel_and_a_half_are_warned_about_as_fractions(tmp_path):
    json_file = _register(tmp_path, "fraction_boxes", _boxes_in_fractions_of_the_image)
    with logged_warnings("focus_detr.data.box_warnings") as messages:
        assert len(get_checked_dataset_dicts("fraction_boxes")) == 2  # legal: tiny objects exist
        check_dataset_jsons("fraction_boxes")
    assert messages == [
        f"dataset 'fraction_boxes' ({json_file}): every box is smaller than 1.5 pixels on both sides (2 boxes, e.g. "
        f"annotation id 100 of {IMAGE}, bbox [0.125, 0.25, 0.25, 0.5] in a 40 x 30 image): a COCO bbox is [x, y, "
        "width, height] in pixels, not in fractions of the image (0..1); multiply x and width by the image's width, "
        "y and height by its height"
    ]


def test_categories_sharing_a_name_are_warned_about_once_per_dataset(tmp_path):
    def edit(coco):
        coco["categories"] = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "a"}]

    json_file = _register(tmp_path, "shared_names", edit)
    with logged_warnings("focus_detr.data.box_warnings") as messages:
        assert len(get_checked_dataset_dicts("shared_names")) == 2  # legal: loaded as three classes
        check_dataset_jsons("shared_names")
    assert messages == [
        f"dataset 'shared_names' ({json_file}): categories 1 and 3 are both named 'a': the model learns them as 2 "
        "classes, which evaluation tables and drawn detections show under one name; merge them into one category or "
        "rename them"
    ]


def test_a_non_finite_box_is_found_in_the_json_before_loading(tmp_path):
    """A test json is checked before training starts without being loaded: its NaN box is refused there too, with
    the line the loaded dicts give."""
    _register(tmp_path, "nan_box", first_bbox([1, float("nan"), 3, 4]))
    with pytest.raises(ValueError) as error:
        check_dataset_jsons("nan_box")
    assert str(error.value) == (
        f"dataset 'nan_box': annotation id 100 of image {tmp_path / 'im0.png'} (image_id 10) has a bbox that is not "
        "finite numbers: [1, nan, 3, 4]; fix or remove it"
    )
    assert coco_json_problem(json.loads((tmp_path / "nan_box.json").read_text())) == (
        "annotation id 100 of image im0.png (image_id 10) has a bbox that is not finite numbers: [1, nan, 3, 4]; "
        "fix or remove it"
    )


# train_net.py, end to end, on the toy data (3 images of 64 x 48; annotation i+1 of image i+1, toy_00i.png)
