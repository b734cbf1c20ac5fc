"""register_coco_dataset: a config that registers its data can be loaded again in the same process."""
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from focus_detr.data import register_coco_dataset


@pytest.fixture
def name():
    yield "registration_test_set"
    for catalog in (DatasetCatalog, MetadataCatalog):
        if "registration_test_set" in catalog.list():
            catalog.remove("registration_test_set")


def test_same_files_again_is_a_no_op_other_files_are_named(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    register_coco_dataset(name, "my/train.json", "my/images", metadata={"thing_classes": ["a"]})
    register_coco_dataset(name, str(tmp_path / "my" / "train.json"), "my/images")  # same files, spelled differently
    assert MetadataCatalog.get(name).thing_classes == ["a"] and MetadataCatalog.get(name).json_file == "my/train.json"
    with pytest.raises(ValueError) as error:
        register_coco_dataset(name, "other.json", "my/images")
    assert str(error.value) == (
        f"dataset '{name}' is already registered for my/train.json / my/images, not other.json / my/images: "
        "pick another name"
    )
