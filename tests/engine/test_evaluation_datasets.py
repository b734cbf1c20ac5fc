"""What is evaluated is what was run through the model: the test loader and the evaluator name one and the same
dataset, the training and test sets name their classes alike, a test set without annotations says that it gives no
AP, an earlier eval_results.json does not outlive a new evaluation that stopped, and the model comes back from an
evaluation in the mode it was in."""
import json

import pytest

from cli_output import error_lines, logged_warnings
from engine_test_utils import TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def other_toy_datasets(tmp_path_factory):
    """A second toy set with the same class, one whose class has another name, one with a second class and one
    without "annotations"."""
    from toy_detector import register_edited_toy_dataset, register_toy_dataset

    def rename_class(coco):
        coco["categories"] = [{"id": 1, "name": "crate"}]

    def add_class(coco):
        coco["categories"] = [{"id": 0, "name": "crate"}, *coco["categories"]]

    root = tmp_path_factory.mktemp("other_toys")
    register_toy_dataset("focus_detr_toy_other", str(root / "other"))
    register_edited_toy_dataset("focus_detr_toy_crates", str(root / "crates"), rename_class)
    register_edited_toy_dataset("focus_detr_toy_two_classes", str(root / "two_classes"), add_class)
    register_edited_toy_dataset("focus_detr_toy_unlabelled", str(root / "unlabelled"), lambda coco: coco.pop("annotations"))
    return root


def _eval_only(train_net, output, *overrides):
    return train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={output}", *overrides])


@pytest.mark.parametrize("override, message", [
    # scored against the other set's annotations: AP 0.0, status 0
    ("dataloader.evaluator.dataset_name=focus_detr_toy_other",
     "dataloader.evaluator.dataset_name is focus_detr_toy_other but the test loader reads focus_detr_toy: the "
     "detections would be scored against focus_detr_toy_other's annotations"),
    # KeyError tracebacks from the catalogs
    ("dataloader.test.dataset.names=[focus_detr_toy,focus_detr_toy_other]",
     "dataloader.evaluator.dataset_name lists 2 datasets (focus_detr_toy, focus_detr_toy_other): COCO evaluation "
     "scores one dataset"),
    ("dataloader.test.dataset.names=[focus_detr_toy]", "dataloader.evaluator.dataset_name is a list (focus_detr_toy)"),
    ("dataloader.test.dataset.names=[]", "dataloader.test.dataset.names is empty: name the test set"),
    # the images without annotations were not run but still scored: no false detection on them counted (AP up)
    ("dataloader.test.dataset.filter_empty=True", "dataloader.test.dataset.filter_empty is True (or left at its "
     "default, True): the test images without annotations would not be run"),
])
def test_the_evaluator_scores_the_dataset_the_model_ran_on(train_net, toy_dataset, other_toy_datasets, tmp_path,
                                                           capsys, override, message):
    assert _eval_only(train_net, tmp_path, override) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), errors


def test_training_refuses_a_test_set_whose_classes_are_named_otherwise(train_net, toy_dataset, other_toy_datasets,
                                                                       tmp_path, capsys):
    # the model's class 0, learnt as "box", was scored as the test set's "crate" without a word
    code = train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}",
                          "dataloader.test.dataset.names=focus_detr_toy_crates"])
    assert code == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: the training set focus_detr_toy and the test set focus_detr_toy_crates name their classes "
        "differently: class 0 is 'box' in focus_detr_toy and 'crate' in focus_detr_toy_crates; the model's classes "
        "would be taken for the test set's classes of the same index (give both jsons the same categories with the "
        "same ids: classes are numbered in the order of their ids)"
    ]
    assert not list(tmp_path.glob("model_*.pth"))  # refused before the first step


def test_an_evaluation_refuses_a_test_set_whose_classes_are_named_otherwise_too(train_net, toy_dataset,
                                                                                other_toy_datasets, tmp_path, capsys):
    # --eval-only scored the model's "box" as the test set's "crate" without a word (only training compared them)
    assert _eval_only(train_net, tmp_path, "dataloader.test.dataset.names=focus_detr_toy_crates") == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(
        "error: the training set focus_detr_toy and the test set focus_detr_toy_crates name their classes differently"
    ), errors
    assert not (tmp_path / "eval_results.json").exists()


def test_an_evaluation_of_a_checkpoint_recording_the_test_set_s_classes_ignores_the_config_s_training_set(
        train_net, toy_dataset, other_toy_datasets, tmp_path, capsys):
    # the recorded names are the model's: the export, the demo and the predictor took them, --eval-only refused
    trained = tmp_path / "trained"
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={trained}", "train.max_iter=1",
                          "dataloader.evaluator=null"]) == 0  # trained on focus_detr_toy: ['box']
    checkpoint = f"train.init_checkpoint={trained / 'model_final.pth'}"
    capsys.readouterr()
    assert _eval_only(train_net, tmp_path / "eval", checkpoint, "dataloader.train.dataset.names=focus_detr_toy_crates") == 0
    assert error_lines(capsys.readouterr().err) == [] and (tmp_path / "eval" / "eval_results.json").exists()


@pytest.mark.parametrize("eval_only", [False, True])
def test_a_test_set_with_other_classes_says_so_before_its_class_count(train_net, toy_dataset, other_toy_datasets,
                                                                       tmp_path, capsys, eval_only):
    # "model.num_classes is 1 but dataset 'focus_detr_toy_two_classes' has 2 classes: set model.num_classes=2",
    # which the training set's count then refused: "... has 1 class (box): set model.num_classes=1"
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}", "train.max_iter=1",
            "dataloader.test.dataset.names=focus_detr_toy_two_classes"]
    assert train_net.cli(argv + (["--eval-only"] if eval_only else [])) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(
        "error: the training set focus_detr_toy and the test set focus_detr_toy_two_classes name their classes "
        "differently: class 0 is 'box' in focus_detr_toy and 'crate' in focus_detr_toy_two_classes;"), errors


def test_a_training_set_that_cannot_be_read_here_is_not_compared(toy_dataset, other_toy_datasets, tmp_path):
    # evaluated on another machine than it was trained on: the training json is not there
    from detectron2.data.datasets import register_coco_instances
    from omegaconf import OmegaConf

    from focus_detr.engine.test_set import check_trained_classes

    register_coco_instances("focus_detr_toy_elsewhere", {}, str(tmp_path / "missing.json"), str(tmp_path))
    cfg = OmegaConf.create({"dataloader": {"train": {"dataset": {"names": "focus_detr_toy_elsewhere"}},
                                           "test": {"dataset": {"names": "focus_detr_toy_crates"}}}})
    check_trained_classes(cfg)


def test_a_training_set_registered_with_other_classes_than_its_json_is_named_not_the_jsons(toy_dataset, tmp_path):
    # the line had said the two jsons name their classes differently, where both name 'box' as class 0
    from omegaconf import OmegaConf
    from toy_detector import register_toy_dataset

    from focus_detr.data import DatasetClassesError, register_coco_dataset
    from focus_detr.engine.test_set import check_trained_classes

    register_toy_dataset("focus_detr_toy_plain", str(tmp_path / "data"))
    register_coco_dataset("focus_detr_toy_given_classes", tmp_path / "data" / "toy.json", tmp_path / "data" / "images",
                          metadata={"thing_classes": ["crate"]})
    cfg = OmegaConf.create({"dataloader": {"train": {"dataset": {"names": "focus_detr_toy_given_classes"}},
                                           "test": {"dataset": {"names": "focus_detr_toy_plain"}}}})
    with pytest.raises(DatasetClassesError, match=r"^dataset 'focus_detr_toy_given_classes' \(.*toy.json\): its "
                                                  r"metadata gives thing_classes \['crate'\], but its json's "
                                                  r"categories, sorted by id as detectron2 numbers the classes, are "
                                                  r"\['box'\]: "):
        check_trained_classes(cfg)


def test_the_training_sets_class_names_are_read_without_loading_its_records(tmp_path, monkeypatch):
    # the demo and --eval-only built and checked the whole training set (tens of seconds at COCO's size) for its names
    from detectron2.data import DatasetCatalog
    from omegaconf import OmegaConf
    from toy_detector import register_edited_toy_dataset

    from focus_detr.engine.config import ConfigError
    from focus_detr.engine.test_set import check_trained_classes

    def renumbered(coco):  # the same two names, their ids in the other order
        coco["categories"] = [{"id": 2, "name": "box"}, {"id": 1, "name": "crate"}]

    def in_order(coco):
        coco["categories"] = [{"id": 1, "name": "box"}, {"id": 2, "name": "crate"}]

    register_edited_toy_dataset("focus_detr_toy_train_big", str(tmp_path / "train"), in_order)
    register_edited_toy_dataset("focus_detr_toy_test_renumbered", str(tmp_path / "test"), renumbered)
    get = DatasetCatalog.get

    def get_unless_big(name):
        return pytest.fail("the training set's records were loaded") if name.endswith("big") else get(name)

    monkeypatch.setattr(DatasetCatalog, "get", get_unless_big)
    cfg = OmegaConf.create({"dataloader": {"train": {"dataset": {"names": "focus_detr_toy_train_big"}},
                                           "test": {"dataset": {"names": "focus_detr_toy_test_renumbered"}}}})
    with pytest.raises(ConfigError, match=r"class 0 is 'box' in focus_detr_toy_train_big and 'crate' in "
                                          r"focus_detr_toy_test_renumbered"):
        check_trained_classes(cfg)


def test_a_test_set_without_annotations_says_it_gives_no_ap(train_net, toy_dataset, other_toy_datasets, tmp_path):
    # only detectron2's INFO line "Annotations are not available for evaluation." said so; status 0
    with logged_warnings("focus_detr.engine.evaluation") as warnings:
        assert _eval_only(train_net, tmp_path, "dataloader.test.dataset.names=focus_detr_toy_unlabelled") == 0
    assert warnings == ["No COCO metric: the test set ['focus_detr_toy_unlabelled'] has no annotations (its json has "
                        "no \"annotations\" list) to score the detections against"]


def _register_in_code(name, edit=lambda record: None):
    """The toy test set registered the plain detectron2 way (a function returning records), each record edited."""
    import copy

    from detectron2.data import DatasetCatalog, MetadataCatalog

    records = copy.deepcopy(DatasetCatalog.get("focus_detr_toy"))
    for record in records:
        edit(record)
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    DatasetCatalog.register(name, lambda: copy.deepcopy(records))
    MetadataCatalog.get(name).thing_classes = ["box"]
    return name


def test_a_test_set_registered_in_code_is_scored_against_its_records_of_now(train_net, toy_dataset, tmp_path):
    # detectron2's COCOEvaluator reused the COCO json it had converted in an earlier evaluation into the same folder,
    # with a warning only: a dataset corrected since was scored against its old boxes (AP 0.0 for boxes moved 40 px)
    name = _register_in_code("focus_detr_toy_in_code")
    assert _eval_only(train_net, tmp_path, f"dataloader.test.dataset.names={name}") == 0
    converted = tmp_path / f"{name}_coco_format.json"
    written = json.loads(converted.read_text())
    stale = dict(written, annotations=[dict(a, bbox=[b + 40 for b in a["bbox"]]) for a in written["annotations"]])
    converted.write_text(json.dumps(stale))  # as if an earlier version of the dataset had been evaluated here
    _register_in_code(name)  # as a new process registers it (detectron2 keeps the converted json's path in metadata)
    assert _eval_only(train_net, tmp_path, f"dataloader.test.dataset.names={name}") == 0
    assert json.loads(converted.read_text())["annotations"] == written["annotations"]


@pytest.mark.parametrize("lock", ["set_readonly", "set_struct"])
def test_the_evaluator_builds_from_a_locked_config(toy_dataset, tmp_path, lock):
    # the in-place allow_cached_coco failed on a read-only or struct config that instantiate itself builds from
    from omegaconf import OmegaConf

    from focus_detr.engine import load_config
    from focus_detr.engine.evaluation import _build_evaluator

    cfg = load_config(TOY_CONFIG, [f"train.output_dir={tmp_path}"])
    getattr(OmegaConf, lock)(cfg, True)
    assert _build_evaluator(cfg.dataloader.evaluator)._metadata.name == "focus_detr_toy"
    assert "allow_cached_coco" not in cfg.dataloader.evaluator


@pytest.mark.parametrize("field", ["image_id", "width"])
def test_a_test_set_registered_in_code_without_what_coco_evaluation_reads_is_one_line_before_training(
        train_net, toy_dataset, tmp_path, capsys, field):
    # a KeyError traceback in detectron2's conversion to COCO json, after all of training (training does without)
    from detectron2.data import DatasetCatalog

    name = _register_in_code(f"focus_detr_toy_without_{field}", lambda record: record.pop(field))
    first_file = DatasetCatalog.get(name)[0]["file_name"]
    code = train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}",
                          f"dataloader.test.dataset.names={name}"])
    assert code == 2 and not (tmp_path / "model_final.pth").exists()
    assert error_lines(capsys.readouterr().err) == [
        f"error: dataset '{name}': record #0 (0-based, {first_file}) has no '{field}', which COCO "
        "evaluation needs to score the test set: give every record of a dataset registered in code an image_id and "
        "the image's height and width"]


def test_an_evaluation_that_stops_leaves_no_earlier_results_behind(train_net, toy_dataset, tmp_path, monkeypatch):
    # an interrupted --eval-only left the previous model's AP next to a config.yaml naming the new weights
    import focus_detr.engine.evaluation_run as evaluation_run

    assert _eval_only(train_net, tmp_path) == 0
    results = tmp_path / "eval_results.json"
    assert "bbox" in json.loads(results.read_text())

    def interrupted(cfg, model):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation_run, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_net.main(train_net.parse_args(["--config-file", TOY_CONFIG, "--eval-only",
                                             f"train.output_dir={tmp_path}"]))
    assert not results.exists() and not list(tmp_path.glob(".eval_results.json.*"))


def test_the_test_sets_class_names_come_from_its_json_when_registered_without_them(tmp_path):
    # the demo labelled every box with its class number ("1", another class's id in the json) for data registered
    # as docs/training.md shows, register_coco_dataset(name, json, images): detectron2 names the classes only once
    # the dataset is loaded; model.json got no class names
    from detectron2.data.datasets import register_coco_instances
    from omegaconf import OmegaConf
    from toy_detector import register_edited_toy_dataset

    from focus_detr.engine.test_set import category_ids_of_test_set, class_names_of_test_set

    def two_classes(coco):
        coco["categories"] = [{"id": 9, "name": "crate"}, {"id": 2, "name": "box"}]
        for annotation in coco["annotations"]:
            annotation["category_id"] = 9

    register_edited_toy_dataset("focus_detr_toy_two_classes", str(tmp_path / "two"), two_classes)

    def test_set(name):
        return OmegaConf.create({"dataloader": {"test": {"dataset": {"names": name}}}})

    assert class_names_of_test_set(test_set("focus_detr_toy_two_classes")) == ["box", "crate"]  # by category id
    # each label's category id, for a deployment writing COCO results from the exported graph (its model.json)
    assert category_ids_of_test_set(test_set("focus_detr_toy_two_classes")) == [2, 9]
    assert class_names_of_test_set(OmegaConf.create({"dataloader": {}})) is None
    register_coco_instances("focus_detr_toy_no_json", {}, str(tmp_path / "missing.json"), str(tmp_path))
    with pytest.raises((ValueError, OSError), match="missing.json"):
        class_names_of_test_set(test_set("focus_detr_toy_no_json"))


def test_the_test_sets_category_ids_come_from_its_json_when_registered_with_class_names(tmp_path):
    # the tree sets are registered with their thing_classes, so nothing loaded the json, and model.json got
    # "category_ids": null where the json's one category has id 1
    import json

    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from omegaconf import OmegaConf

    from focus_detr.engine.test_set import category_ids_of_test_set

    json_file = tmp_path / "named.json"
    json_file.write_text(json.dumps({"images": [], "annotations": [],
                                     "categories": [{"id": 9, "name": "crate"}, {"id": 2, "name": "box"}]}))
    name = "focus_detr_toy_named_categories"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {"thing_classes": ["box", "crate"]}, str(json_file), str(tmp_path))
    cfg = OmegaConf.create({"dataloader": {"test": {"dataset": {"names": name}}}})
    assert category_ids_of_test_set(cfg) == [2, 9]
    assert MetadataCatalog.get(name).get("thing_dataset_id_to_contiguous_id", None) is None  # not loaded for it


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("wrapper", ["TokenSelectionOutputs", "CUDAGraphInference"])
def test_an_evaluation_leaves_the_model_in_the_mode_it_was_in(wrapper, training):
    # detectron2's inference_on_dataset gives the module it runs back its own mode when done; the wrappers evaluate()
    # runs (for the token selection, for CUDA graphs) had a new module's (training) and put an evaluated eval-mode
    # model in training mode: its next call asked for ground truth
    from detectron2.evaluation.evaluator import inference_context

    from conftest import build_tiny_model
    from focus_detr.analysis.selection_quality_evaluator import TokenSelectionOutputs
    from focus_detr.engine.cuda_graphs import CUDAGraphInference

    model = build_tiny_model().train(training)
    wrapped = {"TokenSelectionOutputs": TokenSelectionOutputs, "CUDAGraphInference": CUDAGraphInference}[wrapper]
    with inference_context(wrapped(model)):
        assert not model.training
    assert model.training == training
