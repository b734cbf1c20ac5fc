"""register_coco_dataset: a config that registers its data can be loaded again in the same process; the same name
for other files or other metadata, and arguments of the wrong kind, are one-line errors."""
import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from focus_detr.data import (DatasetClassesError, declared_classes, get_checked_dataset_dicts,
                             register_coco_dataset)


@pytest.fixture
def name():
    yield "registration_test_set"
    for catalog in (DatasetCatalog, MetadataCatalog):
        if "registration_test_set" in catalog.list():
            catalog.remove("registration_test_set")


def _coco_files(folder, class_name, num_images=1):
    """``folder``/ann.json with ``num_images`` images (no image files: loading the dicts does not read them) of one
    class named ``class_name``."""
    folder.mkdir(parents=True)
    images = [{"id": k + 1, "file_name": f"{k}.png", "height": 50, "width": 60} for k in range(num_images)]
    annotations = [{"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100,
                    "iscrowd": 0} for k in range(num_images)]
    categories = [{"id": 1, "name": class_name}]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "ann.json").write_text(json.dumps(coco))
    (folder / "imgs").mkdir()


def test_same_files_again_is_a_no_op_other_files_are_named(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    register_coco_dataset(name, "my/train.json", "my/images", metadata={"thing_classes": ["a"]})
    register_coco_dataset(name, str(tmp_path / "my" / "train.json"), "my/images")  # same files, spelled differently
    assert MetadataCatalog.get(name).thing_classes == ["a"]
    assert MetadataCatalog.get(name).json_file == str(tmp_path / "my" / "train.json")  # stored absolute
    with pytest.raises(ValueError) as error:
        register_coco_dataset(name, "other.json", "my/images")
    assert str(error.value) == (
        f"dataset '{name}' is already registered for {tmp_path}/my/train.json / {tmp_path}/my/images, not "
        f"{tmp_path}/other.json / {tmp_path}/my/images: pick another name"
    )


def test_relative_paths_mean_the_files_of_the_folder_they_were_registered_in(name, tmp_path, monkeypatch):
    _coco_files(tmp_path / "A", "class_A", num_images=1)
    _coco_files(tmp_path / "B", "class_B", num_images=2)
    monkeypatch.chdir(tmp_path / "A")
    register_coco_dataset(name, "ann.json", "imgs")
    monkeypatch.chdir(tmp_path / "B")  # the same strings are other files here
    with pytest.raises(ValueError, match=rf"^dataset '{name}' is already registered for {tmp_path}/A/ann.json / "
                                         rf"{tmp_path}/A/imgs, not {tmp_path}/B/ann.json / {tmp_path}/B/imgs: "):
        register_coco_dataset(name, "ann.json", "imgs")
    monkeypatch.chdir("/")
    dicts = DatasetCatalog.get(name)
    assert [d["file_name"] for d in dicts] == [str(tmp_path / "A" / "imgs" / "0.png")]
    assert MetadataCatalog.get(name).thing_classes == ["class_A"]


def test_a_linked_folder_to_the_same_files_is_the_same_registration(name, tmp_path):
    _coco_files(tmp_path / "A", "a")
    os.symlink(tmp_path / "A", tmp_path / "link")
    register_coco_dataset(name, tmp_path / "A" / "ann.json", tmp_path / "A" / "imgs")  # os.PathLike too
    register_coco_dataset(name, str(tmp_path / "link" / "ann.json"), str(tmp_path / "link" / "imgs") + "/")
    assert MetadataCatalog.get(name).json_file == str(tmp_path / "A" / "ann.json")


def test_other_metadata_for_the_same_name_is_refused(name, tmp_path):
    json_file, image_root = str(tmp_path / "ann.json"), str(tmp_path)
    register_coco_dataset(name, json_file, image_root, metadata={"thing_classes": ["cat"]})
    register_coco_dataset(name, json_file, image_root, metadata={"thing_classes": ["cat"], "evaluator_type": "coco"})
    with pytest.raises(ValueError) as error:
        register_coco_dataset(name, json_file, image_root, metadata={"thing_classes": ["dog"]})
    assert str(error.value) == (
        f"dataset '{name}' is already registered with thing_classes=['cat'], not ['dog']: register the same "
        "metadata, or pick another name"
    )
    with pytest.raises(ValueError, match=r"already registered with thing_colors=not set, not \[\[1, 2, 3\]\]: "):
        register_coco_dataset(name, json_file, image_root, metadata={"thing_colors": [[1, 2, 3]]})
    assert MetadataCatalog.get(name).thing_classes == ["cat"] and MetadataCatalog.get(name).get("thing_colors") is None


@pytest.mark.parametrize("arguments, error_type, message", [
    ((None, "a.json", "imgs"), TypeError,
     "register_coco_dataset: name must be a str (the dataset name the data loaders use), got NoneType None"),
    ((3, "a.json", "imgs"), TypeError,
     "register_coco_dataset: name must be a str (the dataset name the data loaders use), got int 3"),
    ((["a"], "a.json", "imgs"), TypeError,
     "register_coco_dataset: name must be a str (the dataset name the data loaders use), got list ['a']"),
    (("", "a.json", "imgs"), ValueError,
     "register_coco_dataset: name is empty; give the dataset name the data loaders use"),
    (("registration_test_set", None, "imgs"), TypeError,
     "register_coco_dataset: json_file must be a path (str or os.PathLike), got NoneType None"),
    (("registration_test_set", "", "imgs"), ValueError, "register_coco_dataset: json_file is empty"),
    (("registration_test_set", "a.json", 3), TypeError,
     "register_coco_dataset: image_root must be a path (str or os.PathLike), got int 3"),
    (("registration_test_set", "a.json", "imgs", ["cat"]), TypeError,
     "register_coco_dataset: metadata must be a dict (e.g. {'thing_classes': [...]}) or None, got list"),
    (("registration_test_set", "a.json", "imgs", {"json_file": "b.json"}), ValueError,
     "register_coco_dataset: metadata sets json_file; pass the file(s) as the json_file argument"),
])
def test_arguments_of_the_wrong_kind_get_one_line_naming_the_argument(name, arguments, error_type, message):
    with pytest.raises(error_type) as error:
        register_coco_dataset(*arguments)
    assert str(error.value) == message
    assert name not in DatasetCatalog.list()


def test_a_missing_json_is_named_with_its_dataset_when_loaded(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    register_coco_dataset(name, "later.json", "imgs")  # registering reads nothing: a config loads without its data
    monkeypatch.chdir("/")
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get(name)
    assert str(error.value) == f"dataset '{name}': json file {tmp_path}/later.json not found"
    (tmp_path / "later.json").mkdir()
    with pytest.raises(ValueError) as error:
        DatasetCatalog.get(name)
    assert str(error.value) == (
        f"dataset '{name}': json file {tmp_path}/later.json is not a regular file; name the COCO json file itself"
    )


def test_a_missing_json_is_named_with_its_dataset_by_the_checked_loader(name, tmp_path):
    # training and --eval-only read it through get_checked_dataset_dicts: a bare "[Errno 2] No such file or
    # directory" named no dataset
    from focus_detr.data import get_checked_dataset_dicts

    register_coco_dataset(name, str(tmp_path / "later.json"), str(tmp_path / "imgs"))
    with pytest.raises(FileNotFoundError) as error:
        get_checked_dataset_dicts(name)
    assert str(error.value) == f"dataset '{name}' ({tmp_path}/later.json): json file not found"


def _two_class_files(folder):
    """``folder``/ann.json of classes 'tree' (id 1) and 'shrub' (id 2), listed in the json in the other order."""
    _coco_files(folder, "tree")
    coco = json.loads((folder / "ann.json").read_text())
    coco["categories"] = [{"id": 2, "name": "shrub"}, {"id": 1, "name": "tree"}]
    (folder / "ann.json").write_text(json.dumps(coco))
    return folder / "ann.json"


def test_thing_classes_given_as_a_tuple_are_the_jsons_list(name, tmp_path):
    json_file = _two_class_files(tmp_path / "d")
    register_coco_dataset(name, json_file, tmp_path / "d" / "imgs", metadata={"thing_classes": ("tree", "shrub")})
    register_coco_dataset(name, json_file, tmp_path / "d" / "imgs", metadata={"thing_classes": ["tree", "shrub"]})
    # detectron2 refused a tuple: "cannot be set to a different value"
    assert len(get_checked_dataset_dicts([name])) == 1
    assert MetadataCatalog.get(name).thing_classes == ["tree", "shrub"]


@pytest.mark.parametrize("load", ["catalog", "checked", "declared"])
def test_thing_classes_other_than_the_jsons_are_one_line_naming_both(name, tmp_path, load):
    json_file = _two_class_files(tmp_path / "d")
    register_coco_dataset(name, json_file, tmp_path / "d" / "imgs", metadata={"thing_classes": ["shrub", "tree"]})
    loads = {"catalog": DatasetCatalog.get, "checked": get_checked_dataset_dicts, "declared": declared_classes}
    with pytest.raises(DatasetClassesError) as error:
        loads[load](name)
    assert str(error.value) == (
        f"dataset '{name}' ({json_file}): its metadata gives thing_classes ['shrub', 'tree'], but its json's "
        "categories, sorted by id as detectron2 numbers the classes, are ['tree', 'shrub']: give thing_classes in "
        "that order, or leave them out of the registration's metadata (they are read from the json)")
