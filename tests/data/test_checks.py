"""Dataset checks: non-finite boxes are refused naming dataset, image and annotation id; a model's class count must
match the dataset's."""
import json

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from focus_detr.data import check_finite_boxes, check_num_classes, get_checked_dataset_dicts


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


def test_class_count_mismatch_names_both_counts(tmp_path):
    name = _register(tmp_path, "checks_classes", [[1, 2, 3, 4]], categories=("tree",))
    check_num_classes(1, name)
    with pytest.raises(ValueError) as error:
        check_num_classes(5, [name])
    assert str(error.value) == (
        "model.num_classes is 5 but dataset 'checks_classes' has 1 class (tree): set model.num_classes=1"
    )
