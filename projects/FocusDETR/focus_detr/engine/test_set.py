"""What an evaluation reads, checked before it runs (and before a training run's first step, whose evaluations read
the same): evaluator settings that can work, one test set named by loader and evaluators, the classes of model,
training set and test set, the channel order, a test loader that builds, and its image files; the class names and
category ids exports and the demo take from it; and ``build_loader``, which names the config section a loader's
construction failed in."""
import inspect
import logging

from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from omegaconf import DictConfig, ListConfig

from ..data import (DatasetClassesError, check_dataset_jsons, check_evaluable, check_image_files, check_num_classes,
                    class_difference, dataset_classes, declared_category_ids, declared_classes)
from .augmentations import check_augmentations
from .cli import raised_in_this_package
from .config import ConfigError, _dataset_names_in
from .config_types import located_target
from .settings import FORMAT_KEYS, mapper_entry

__all__ = ["build_loader", "category_ids_of_test_set", "check_evaluation_datasets", "check_evaluator_settings",
           "check_model_classes", "check_same_classes", "check_same_input_format", "check_test_images",
           "check_test_set", "check_trained_classes", "class_names_of_loader", "class_names_of_test_set",
           "evaluator_nodes", "is_coco_evaluator", "metadata_of_test_set"]

logger = logging.getLogger(__name__)


def check_evaluation_datasets(cfg):
    """Raises ConfigError (one line) unless the test loader and each evaluator (:func:`evaluator_nodes`) name one and
    the same dataset: a test set of no name, or a list of several (detectron2's COCOEvaluator scores one dataset, and
    one given as a list is looked up as a name), or an evaluator scoring another dataset than the one run through the
    model (its detections were silently scored against the other set's annotations: AP 0.0 for trees_val against
    trees_train's)."""
    dataset = cfg.dataloader.test.get("dataset", None)
    names = dataset.get("names", None) if isinstance(dataset, DictConfig) else None
    if isinstance(names, (list, ListConfig)) and len(names) == 0:
        raise ConfigError("dataloader.test.dataset.names is empty: name the test set, e.g. "
                          "dataloader.test.dataset.names=trees_val")
    evaluators = evaluator_nodes(cfg)
    if evaluators and _filters_empty_images(dataset):
        # a toy test set with one background image: AP 50.0 unfiltered, 100.0 filtered
        raise ConfigError("dataloader.test.dataset.filter_empty is True (or left at its default, True): the test "
                          "images without annotations would not be run, while the evaluation still scores them, so "
                          "no false detection on them would count; set dataloader.test.dataset.filter_empty=False")
    for key, evaluator in evaluators:
        _check_scored_dataset(key, evaluator, dataset)


def _check_scored_dataset(key, evaluator, dataset):
    """:func:`check_evaluation_datasets` for the evaluator ``evaluator`` of the config key ``key`` and the test
    loader's ``dataset`` node."""
    scored = evaluator.get("dataset_name", None) if isinstance(evaluator, DictConfig) else None
    if scored is None:
        return
    if not isinstance(scored, str):
        scored = list(scored)
        several = f"lists {len(scored)} datasets" if len(scored) != 1 else "is a list"
        raise ConfigError(f"{key}.dataset_name {several} ({', '.join(map(str, scored))}): COCO "
                          "evaluation scores one dataset, named as a string (e.g. dataloader.test.dataset.names="
                          f"{scored[0] if scored else 'NAME'}); evaluate each test set with its own command")
    tested = _dataset_names_in(dataset) if dataset is not None else []
    if tested and tested != [scored]:
        raise ConfigError(f"{key}.dataset_name is {scored} but the test loader reads "
                          f"{', '.join(tested)}: the detections would be scored against {scored}'s annotations; "
                          "name one dataset in both (the configs' evaluator follows dataloader.test.dataset.names)")
    if is_coco_evaluator(evaluator):
        check_evaluable([scored])  # what only pycocotools reads, found before inference (or training) starts


def evaluator_nodes(cfg):
    """``(config key, LazyCall node)`` of each evaluator of ``cfg.dataloader.evaluator``: one, or each of a list
    (detectron2's ``inference_on_dataset`` runs a list as one ``DatasetEvaluators``); none for null."""
    evaluator = (cfg.get("dataloader", None) or {}).get("evaluator", None)
    if isinstance(evaluator, (list, ListConfig)):
        return [(f"dataloader.evaluator[{index}]", node) for index, node in enumerate(evaluator)]
    return [] if evaluator is None else [("dataloader.evaluator", evaluator)]


def check_evaluator_settings(cfg, required_by=None):
    """Raises ConfigError (one line) for evaluator settings that fail only once the detections are scored, after the
    inference (in training, after the iterations since the last checkpoint): an empty list of evaluators, two
    COCOEvaluators (detectron2's ``DatasetEvaluators`` refuses two results named "bbox"), or a COCOEvaluator's
    ``tasks`` other than a list of bbox (:func:`_check_coco_tasks`). ``required_by``: the command that needs an
    evaluator (``--eval-only``, which without one loaded the model, scored nothing and wrote ``{}`` as its
    results), refused for ``dataloader.evaluator=null``; None: null is no evaluation (training skips it)."""
    evaluator = (cfg.get("dataloader", None) or {}).get("evaluator", None)
    if evaluator is None and required_by:
        raise ConfigError(f"{required_by} needs dataloader.evaluator, and the config has none: nothing would score "
                          "the detections; leave out the override dataloader.evaluator=null (or give the config an "
                          "evaluator)")
    if isinstance(evaluator, (list, ListConfig)) and len(evaluator) == 0:
        raise ConfigError("dataloader.evaluator is an empty list, which evaluates nothing: give it an evaluator (e.g. "
                          "the configs' COCOEvaluator), or set dataloader.evaluator=null to train without evaluation")
    coco = [(key, node) for key, node in evaluator_nodes(cfg) if is_coco_evaluator(node)]
    if len(coco) > 1:
        raise ConfigError(f"{coco[0][0]} and {coco[1][0]} are both COCOEvaluators: detectron2 refuses two results "
                          "named 'bbox' (after the inference); keep one, and evaluate other settings with a command "
                          "each")
    for key, node in coco:
        _check_coco_tasks(key, node.get("tasks", None))


# COCOEvaluator's tasks, and what the model must predict for each but bbox
_COCO_TASKS = {"bbox": None, "segm": "masks", "keypoints": "keypoints"}


def _check_coco_tasks(key, tasks):
    """A COCOEvaluator's ``tasks`` (config key ``key``) must be None (its default: the predictions' tasks) or a list
    of bbox: a string is read letter by letter ("Got unknown task: b!"), and segm or keypoints need predictions this
    box detector does not make (segm ended in pycocotools' "KeyError: 'id'")."""
    if tasks is None:
        return
    fix = f"set {key}.tasks=[bbox] (or leave it out)"
    if not isinstance(tasks, (list, tuple, ListConfig)):
        raise ConfigError(f"{key}.tasks must be a list of tasks, got {tasks!r} (COCOEvaluator would read a string "
                          f"letter by letter): {fix}")
    unknown = [task for task in tasks if not (isinstance(task, str) and task in _COCO_TASKS)]
    if unknown:
        raise ConfigError(f"{key}.tasks has {unknown[0]!r}, not one of COCOEvaluator's tasks "
                          f"({', '.join(_COCO_TASKS)}): {fix}")
    other = [task for task in tasks if task != "bbox"]
    if other:
        raise ConfigError(f"{key}.tasks has {other[0]}, which needs {_COCO_TASKS[other[0]]}, which Focus-DETR does "
                          f"not predict (it predicts boxes): {fix}")
    if not tasks:
        raise ConfigError(f"{key}.tasks is empty, which scores nothing: {fix}")


def _filters_empty_images(dataset_node) -> bool:
    """Whether the LazyCall ``dataset_node`` (detectron2's ``get_detection_dataset_dicts`` or ours) drops the images
    without annotations: its ``filter_empty``, or the default of the function it calls when not given."""
    if not isinstance(dataset_node, DictConfig):
        return False
    if "filter_empty" in dataset_node:
        return dataset_node.filter_empty is True
    try:
        default = inspect.signature(located_target(dataset_node.get("_target_"))).parameters["filter_empty"].default
    except (TypeError, ValueError, KeyError):  # not found or not callable, no signature, no such argument
        return False
    return default is True


def check_test_set(cfg, model=None):
    """Checks, before a training run's first step, what its evaluations will read (the one at the end runs whatever
    ``train.eval_period``): one dataset named by loader and evaluator, the classes of ``model`` (when given) and of
    the training set, the channel order, a test loader that can be built (batch size, workers, mapper) and every
    test image file present. Each failure is a one-line error, not one found after all of training."""
    check_evaluator_settings(cfg)
    check_evaluation_datasets(cfg)
    # the class names first: a class count that fits the training set but not the test set would otherwise be
    # "set model.num_classes=<the test set's>", which the training set's check then refuses in turn
    check_same_classes(cfg.dataloader.train, cfg.dataloader.test)
    if model is not None:
        check_model_classes(model, cfg.dataloader.test)
    check_same_input_format(cfg.dataloader.train, cfg.dataloader.test)
    # its own errors named too: the test json is checked above, what fails here is a setting of the loader
    build_loader(cfg, "test", name_own_errors=True)
    check_test_images(cfg)


def build_loader(cfg, section: str, name_own_errors: bool = False):
    """``instantiate(cfg.dataloader.<section>)`` ("train" or "test"); a ValueError or TypeError of detectron2's or
    torch's parts (a batch size of 0, negative workers: their messages name no config key) as a ConfigError naming
    the section. This package's own errors (a dataset's file and problem) pass unchanged, unless
    ``name_own_errors`` (a mapper's, "DetrDatasetMapper: augmentation_with_crop is for training only", names no
    section); its ConfigErrors always do. Its mapper's augmentations are checked first, each named by its config key
    (:func:`.augmentations.check_augmentations`)."""
    check_augmentations(cfg.dataloader[section], f"dataloader.{section}")
    try:
        return instantiate(cfg.dataloader[section])
    except (ValueError, TypeError) as error:
        if isinstance(error, ConfigError) or (raised_in_this_package(error) and not name_own_errors):
            raise
        what = "training" if section == "train" else section
        raise ConfigError(f"the config's {what} loader (dataloader.{section}) cannot be built: {error}") from None


def check_test_images(cfg, purpose="the evaluation at the end of training"):
    """ValueError naming the test set, its json and the first test image whose file is missing (a stat per image),
    checked before training or an ``--eval-only`` inference: ``purpose``, the evaluation that would stop there, would
    find it only after the images before it (after all of training, for the one at its end)."""
    dataset = cfg.dataloader.test.get("dataset", None)
    if dataset is not None:
        check_image_files(_dataset_names_in(dataset), purpose)


def is_coco_evaluator(node):
    """Whether the LazyCall ``node`` builds a detectron2 COCOEvaluator (its class, or its name from a YAML config)."""
    target = located_target(node.get("_target_")) if isinstance(node, DictConfig) else None
    return isinstance(target, type) and issubclass(target, COCOEvaluator)


def check_same_classes(train_node, test_node, train_classes=dataset_classes):
    """Raises ConfigError (one line) when the datasets of a training loader and of a test loader name their classes
    differently (other names, or another order): the model's class i, learnt as the training set's i-th class,
    would be taken for the test set's i-th. Datasets without class names are not compared. ``train_classes``: how
    the training sets' names are read (dataset name -> list or None)."""
    def classes(names, read):
        found = {}
        for name in names:
            thing_classes = read(name)
            if thing_classes is not None:
                found[name] = list(thing_classes)
        return found

    trained = classes(_dataset_names_in(train_node), train_classes)
    tested = classes(_dataset_names_in(test_node), dataset_classes)
    for train_name, train_classes in trained.items():
        for test_name, test_classes in tested.items():
            difference = class_difference(train_classes, test_classes)
            if difference is not None:
                index, in_train, in_test = difference
                raise ConfigError(
                    f"the training set {train_name} and the test set {test_name} name their classes differently: "
                    f"class {index} is {in_train} in {train_name} and {in_test} in {test_name}; the model's classes "
                    "would be taken for the test set's classes of the same index (give both jsons the same categories "
                    "with the same ids: classes are numbered in the order of their ids)"
                )


def check_trained_classes(cfg):
    """:func:`check_same_classes` for a command that does not train (``--eval-only``, the demo, the export): the
    model's classes are the config's training set's, so a test set that names them otherwise would be scored, or
    its labels drawn, as other classes. A training set that cannot be read here (its json on another machine) is
    not compared."""
    dataloader = cfg.get("dataloader", None) or {}
    train, test = dataloader.get("train", None), dataloader.get("test", None)
    if train is None or test is None:
        return
    try:  # the names alone: the training set's records are not built or checked for this
        trained = {name: declared_classes(name) for name in _dataset_names_in(train)}
    except DatasetClassesError:  # its metadata's classes are not its json's: neither can be taken for the model's
        raise
    except (ValueError, OSError, KeyError) as error:
        logger.info(f"The training set's class names are not compared with the test set's (it cannot be read "
                    f"here: {error})")
        return
    check_same_classes(train, test, train_classes=trained.get)


def check_same_input_format(train_node, test_node):
    """Raises ConfigError when the training and the test mapper give the model images in other channel orders
    (``img_format`` RGB against BGR: the tree model's AP fell from 5.58 to 0.32, silently). Mappers that do not say
    are not compared."""
    formats = [mapper_entry((node or {}).get("mapper", None), FORMAT_KEYS) for node in (train_node, test_node)]
    (train_key, train_format), (test_key, test_format) = formats
    if train_key and test_key and train_format != test_format:
        raise ConfigError(f"dataloader.train.mapper.{train_key} is {train_format} but dataloader.test.mapper."
                          f"{test_key} is {test_format}: the model would be scored on images in another channel order "
                          "than it learnt; give both the same")



def check_model_classes(model, dataloader_node):
    """Raises ValueError when the datasets a loader config names have another number of classes than ``model``
    (models without a ``num_classes`` attribute are not checked) or an inconsistent COCO json (duplicate ids, ...)."""
    check_dataset_jsons(_dataset_names_in(dataloader_node))  # the test data too, before training starts
    num_classes = getattr(getattr(model, "module", model), "num_classes", None)
    if num_classes is not None:
        check_num_classes(num_classes, _dataset_names_in(dataloader_node))


def class_names_of_loader(loader_node):
    """The class names of the first dataset a loader config (``dataloader.train`` / ``.test``) names, or None when it
    names no dataset or its metadata no classes. The dataset is loaded when its metadata holds none yet: a COCO json
    registered without ``thing_classes`` (``register_coco_dataset(name, json, images)``) gets them then. Raises
    ValueError / OSError (one line) when the dataset cannot be read."""
    names = _dataset_names_in(loader_node) if loader_node is not None else []
    classes = dataset_classes(names[0]) if names else None
    return None if classes is None else list(classes)


def class_names_of_test_set(cfg):
    """:func:`class_names_of_loader` of the config's test set (``dataloader.test``); None without one."""
    return class_names_of_loader((cfg.get("dataloader", None) or {}).get("test", None))


def metadata_of_test_set(cfg):
    """detectron2's ``Metadata`` of the config's test set (the first, where it names several), or None without one.
    A COCO json's ``thing_classes`` are in it once :func:`class_names_of_test_set` has run."""
    names = _dataset_names_in((cfg.get("dataloader", None) or {}).get("test", None) or {})
    return MetadataCatalog.get(names[0]) if names else None


def category_ids_of_test_set(cfg):
    """The dataset category id of each class index of the config's test set (the first, where it names several),
    e.g. ``[3, 7, 42]`` (:func:`focus_detr.data.declared_category_ids`: detectron2's numbering, read from the json's
    categories when the dataset is not loaded yet); None without a test set or when it does not say."""
    names = _dataset_names_in((cfg.get("dataloader", None) or {}).get("test", None) or {})
    return declared_category_ids(names[0]) if names else None
