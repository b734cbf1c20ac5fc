"""Dataset checks: non-finite boxes are refused naming dataset, image and annotation id; a model's class count must
match the dataset's; a COCO json's image and annotation ids and file names must each mean one thing."""
import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from focus_detr.data import check_dataset_jsons, check_finite_boxes, check_num_classes, get_checked_dataset_dicts


def _register(tmp_path, name, bboxes, categories=("a",)):
    images = [{"id": 10 + i, "file_name": f"im{i}.png", "height": 32, "width": 32} for i in range(len(bboxes))]
    annotations = [
        {"id": 100 + i, "image_id": 10 + i, "category_id": 1, "bbox": bbox, "area": 1.0, "iscrowd": 0}
        for i, bbox in enumerate(bboxes)
    ]
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(categories)]
    json_file = tmp_path / f"{name}.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    return name


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_box_is_refused_naming_image_and_annotation_id(tmp_path, bad):
    name = _register(tmp_path, "checks_bad_box", [[1, 2, 3, 4], [1, bad, 3, 4]])
    with pytest.raises(ValueError) as error:
        get_checked_dataset_dicts(name, filter_empty=False)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("dataset 'checks_bad_box': annotation id 101 of image ")
    assert f"im1.png (image_id 11) has a bbox that is not finite numbers: [1, {bad}, 3, 4]" in message


def test_finite_boxes_pass_and_dicts_without_ids_are_named_by_position(tmp_path):
    name = _register(tmp_path, "checks_good_box", [[1, 2, 3, 4], [0.5, 0, 3, 4]])
    assert len(get_checked_dataset_dicts(name, filter_empty=False)) == 2
    record = {"file_name": "x.png", "image_id": 7, "annotations": [{"bbox": [0, 0, 1, 1]}, {"bbox": [0, None, 1, 1]}]}
    with pytest.raises(ValueError, match=r"annotation #1 \(0-based\) of image x\.png \(image_id 7\)"):
        check_finite_boxes([record], "custom")


def test_datasets_of_one_loader_with_other_classes_are_one_line_naming_both_and_the_class(tmp_path):
    # detectron2's "Datasets have different metadata 'thing_classes'!" named neither the datasets nor the classes
    first = _register(tmp_path, "checks_classes_ab", [[1, 2, 3, 4]], categories=("a", "b"))
    second = _register(tmp_path, "checks_classes_ac", [[1, 2, 3, 4]], categories=("a", "c"))
    with pytest.raises(ValueError) as error:
        get_checked_dataset_dicts([first, first, second])
    assert str(error.value) == (
        f"the datasets checks_classes_ab ({tmp_path / 'checks_classes_ab.json'}) and checks_classes_ac "
        f"({tmp_path / 'checks_classes_ac.json'}) of one loader name their classes differently: class 1 is 'b' in "
        "checks_classes_ab and 'c' in checks_classes_ac; their class indices would mean other classes (give their "
        "jsons the same categories with the same ids: classes are numbered in the order of their ids)")


def test_datasets_with_the_same_classes_as_a_tuple_and_a_list_keep_detectron2s_line(tmp_path):
    # detectron2 tells ("a", "b") from ["a", "b"]; the line naming the differing class found none (StopIteration)
    first = _register(tmp_path, "checks_classes_list", [[1, 2, 3, 4]], categories=("a", "b"))
    second = _register_in_code("checks_classes_tuple", lambda: [_record(0)])
    MetadataCatalog.remove(second)
    MetadataCatalog.get(second).thing_classes = ("a", "b")
    with pytest.raises(ValueError, match="^Datasets have different metadata 'thing_classes'!$"):
        get_checked_dataset_dicts([first, second])


def _register_in_code(name, records, thing_classes=("a", "b")):
    """A dataset registered the plain detectron2 way: a function returning the records, its classes in metadata."""
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    DatasetCatalog.register(name, records)
    MetadataCatalog.get(name).thing_classes = list(thing_classes)
    return name


def _record(category_id):
    from detectron2.structures import BoxMode

    return {"file_name": "x.png", "image_id": 1, "height": 32, "width": 32, "annotations": [
        {"bbox": [1, 2, 10, 12], "bbox_mode": BoxMode.XYXY_ABS, "category_id": category_id, "iscrowd": 0}]}


@pytest.mark.parametrize("category_id", [2, -1])
def test_a_category_id_outside_the_classes_of_a_dataset_registered_in_code_is_one_line(category_id):
    # detectron2's AssertionError traceback, "Got an invalid category_id=2 for a dataset of 2 classes"
    name = _register_in_code("checks_in_code_ids", lambda: [_record(0), _record(category_id)])
    with pytest.raises(ValueError) as error:
        get_checked_dataset_dicts(name)
    assert str(error.value) == (f"dataset 'checks_in_code_ids': an annotation has category_id {category_id}, but the "
                                "dataset has 2 classes (thing_classes): the category_id of records registered in code "
                                "is the class's index, from 0 to 1")


def test_a_dataset_function_returning_a_generator_is_one_line():
    # was "object of type 'generator' has no len()", naming neither the dataset nor the fix
    name = _register_in_code("checks_in_code_generator", lambda: (r for r in [_record(0)]))
    with pytest.raises(ValueError, match=r"^dataset 'checks_in_code_generator': its registered function returned a "
                                         r"generator, not a list of dicts \(DatasetCatalog.register"):
        get_checked_dataset_dicts(name)
    assert len(get_checked_dataset_dicts(_register_in_code("checks_in_code_list", lambda: [_record(1)]))) == 1


@pytest.mark.parametrize("bbox, warned", [
    # fractions of the image: trained without a word (first total_loss 762 against 45)
    ([0.1, 0.2, 0.3, 0.4], "dataset 'checks_in_code_boxes' (registered in code): every box is smaller than 1.5 "
                           "pixels on both sides (2 boxes, e.g. annotation id #0 (0-based) of image x.png (image_id "
                           "1), bbox [0.1, 0.2, 0.3, 0.4] in a 32 x 32 image)"),
    # clipped in training, scored as written
    ([20, 2, 60, 12], "dataset 'checks_in_code_boxes' (registered in code): 2 boxes reaching more than 1 pixel "
                      "outside the image, e.g. annotation id #0 (0-based) of image x.png (image_id 1), bbox "
                      "[20, 2, 60, 12] in a 32 x 32 image"),
    ([1, 2, 10, 12], None),
])
def test_boxes_of_a_dataset_registered_in_code_get_the_json_checks_warnings(bbox, warned, monkeypatch):
    from focus_detr.data import box_warnings

    warnings = []
    monkeypatch.setattr(box_warnings.logger, "warning", warnings.append)
    record = _record(0)
    record["annotations"][0]["bbox"] = bbox
    get_checked_dataset_dicts(_register_in_code("checks_in_code_boxes", lambda: [record, dict(record, image_id=2)]))
    assert len(warnings) == (1 if warned else 0) and all(w.startswith(warned) for w in warnings), warnings


def test_boxes_of_a_dataset_registered_in_code_with_numpy_values_are_checked_too(monkeypatch):
    # records built from arrays (pandas, numpy) were skipped: np.int64 sizes, an ndarray bbox
    import numpy as np

    from focus_detr.data import box_warnings

    warnings = []
    monkeypatch.setattr(box_warnings.logger, "warning", warnings.append)
    record = dict(_record(0), height=np.int64(32), width=np.int64(32))
    record["annotations"] = [dict(record["annotations"][0], bbox=np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))]
    get_checked_dataset_dicts(_register_in_code("checks_in_code_numpy", lambda: [record]))
    assert len(warnings) == 1 and "every box is smaller than 1.5 pixels on both sides (1 box" in warnings[0]


def test_class_count_mismatch_names_both_counts(tmp_path):
    name = _register(tmp_path, "checks_classes", [[1, 2, 3, 4]], categories=("tree",))
    check_num_classes(1, name)
    with pytest.raises(ValueError) as error:
        check_num_classes(5, [name])
    assert str(error.value) == (
        "model.num_classes is 5 but dataset 'checks_classes' has 1 class (tree): set model.num_classes=1"
    )


def _register_coco(tmp_path, name, edit):
    """The one-image dataset of ``_register`` with its json changed by ``edit(coco)``."""
    _register(tmp_path, name, [[1, 2, 3, 4]])
    json_file = tmp_path / f"{name}.json"
    coco = json.loads(json_file.read_text())
    edit(coco)
    json_file.write_text(json.dumps(coco))
    return name, json_file


def _crowd_only(coco):
    coco["annotations"][0]["iscrowd"] = 1


def _no_annotations(coco):
    coco["annotations"] = []


def _no_images(coco):
    coco["images"], coco["annotations"] = [], []


@pytest.mark.parametrize("edit", [_crowd_only, _no_annotations])
def test_a_dataset_with_no_usable_image_is_one_line_naming_it(tmp_path, edit):
    name, json_file = _register_coco(tmp_path, "checks_unusable", edit)
    with pytest.raises(ValueError) as error:
        get_checked_dataset_dicts(name, filter_empty=True)
    assert str(error.value) == (
        f"No valid data found in dataset 'checks_unusable' ({json_file}): no image has a box that is not crowd "
        "(iscrowd 0), and training uses only such images"
    )
    assert len(get_checked_dataset_dicts(name, filter_empty=False)) == 1  # evaluation keeps images without boxes


def test_a_dataset_without_images_is_named(tmp_path):
    name, json_file = _register_coco(tmp_path, "checks_no_images", _no_images)
    with pytest.raises(ValueError) as error:
        get_checked_dataset_dicts(name, filter_empty=False)
    assert str(error.value) == f"dataset 'checks_no_images' ({json_file}) is empty: it lists no images"


def _unknown_category(coco):
    coco["annotations"][0]["category_id"] = 7


def _no_categories(coco):
    coco["categories"] = []


@pytest.mark.parametrize("edit, why", [
    (_unknown_category, ": annotation id 100 of image_id 10 has category_id 7, which is not among the json's "
                        "categories (ids 1); add the category or fix the annotation"),
    (_no_categories, ": no categories: list the dataset's classes in the json's 'categories'"),
])
def test_a_category_missing_from_the_json_is_named_by_loader_and_class_check(tmp_path, edit, why):
    name, json_file = _register_coco(tmp_path, "checks_categories", edit)
    expected = f"dataset 'checks_categories' ({json_file}){why}"
    with pytest.raises(ValueError) as error:
        check_num_classes(1, name)  # loads the dataset to learn its classes
    assert str(error.value) == expected
    with pytest.raises(ValueError) as error:
        get_checked_dataset_dicts(name)
    assert str(error.value) == expected


def _two_images(coco):
    """A second image (id 11, im1.png) with its own annotation (id 101), for the id checks below to break."""
    coco["images"].append({"id": 11, "file_name": "im1.png", "height": 32, "width": 32})
    coco["annotations"].append(
        {"id": 101, "image_id": 11, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 1.0, "iscrowd": 0}
    )


def _duplicate_image_id(coco):
    _two_images(coco)
    coco["images"][1]["id"] = coco["annotations"][1]["image_id"] = 10


def _duplicate_annotation_id(coco):
    _two_images(coco)
    coco["annotations"][1]["id"] = 100


def _annotation_of_no_image(coco):
    _two_images(coco)
    coco["annotations"][1]["image_id"] = 99


def _one_file_twice(coco):
    _two_images(coco)
    coco["images"][1]["file_name"] = "./im0.png"


@pytest.mark.parametrize("edit, why", [
    (_duplicate_image_id, "image id 10 is used by two images ('im0.png' and 'im1.png'); image ids must be unique, "
                          "or their annotations are scored against one of them"),
    (_duplicate_annotation_id, "annotation id 100 is used by two annotations; annotation ids must be unique"),
    (_annotation_of_no_image, "annotation id 101 has image_id 99, which no image has; fix the image_id or remove "
                              "the annotation"),
    (_one_file_twice, "images 10 and 11 both name the file './im0.png'; list each image once (twice, it is trained "
                      "on and scored twice)"),
])
def test_inconsistent_ids_in_the_json_are_one_line_naming_file_and_id(tmp_path, edit, why):
    name, json_file = _register_coco(tmp_path, "checks_ids", edit)
    with pytest.raises(ValueError) as error:
        get_checked_dataset_dicts(name, filter_empty=False)
    assert str(error.value) == f"dataset 'checks_ids' ({json_file}): {why}"
    with pytest.raises(ValueError, match="^dataset 'checks_ids' "):
        check_dataset_jsons([name])


@pytest.mark.parametrize("spelling", ["absolute", "linked_folder"])
def test_one_image_file_listed_under_two_spellings_is_named(tmp_path, spelling):
    """detectron2 joins the image root and the file name: "im0.png" and its absolute path, or the same file through a
    linked folder, are one image trained on and scored twice."""
    (tmp_path / "linked").symlink_to(tmp_path, target_is_directory=True)
    other = {"absolute": str(tmp_path / "im0.png"), "linked_folder": "linked/im0.png"}[spelling]

    def edit(coco):
        _two_images(coco)
        coco["images"][1]["file_name"] = other

    name, json_file = _register_coco(tmp_path, "checks_spelling", edit)
    with pytest.raises(ValueError) as error:
        get_checked_dataset_dicts(name, filter_empty=False)
    assert str(error.value) == (
        f"dataset 'checks_spelling' ({json_file}): images 10 and 11 name one file, 'im0.png' and {other!r} (both "
        f"{os.path.realpath(tmp_path / 'im0.png')}); list each image once (twice, it is trained on and scored twice)"
    )


def test_a_consistent_json_passes_and_a_rewritten_json_is_checked_again(tmp_path):
    name, json_file = _register_coco(tmp_path, "checks_ids_fixed", _two_images)
    check_dataset_jsons(name)
    assert len(get_checked_dataset_dicts(name)) == 2
    coco = json.loads(json_file.read_text())
    coco["annotations"][1]["id"] = 100
    json_file.write_text(json.dumps(coco) + " " * 10)  # another size: not the verdict kept for the old file
    with pytest.raises(ValueError, match="annotation id 100 is used by two annotations"):
        check_dataset_jsons(name)
