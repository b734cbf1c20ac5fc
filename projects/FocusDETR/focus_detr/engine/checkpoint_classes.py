"""The class names a checkpoint was trained on, in the order of the model's outputs (its ``thing_classes`` entry,
which training writes), compared with the classes of the data a command pairs the model's outputs with.

A model's class i is the i-th class of its training set, which detectron2 numbers in the order of the json's
category ids; a re-exported json that numbers the same objects otherwise gives the same count, so nothing else tells
that the evaluation scores the model's "tree" as "shrub". Checkpoints without the entry (older runs, detrex weights)
are not compared."""
import logging
from typing import List, NamedTuple, Optional

from ..checkpoint import CheckpointError
from ..data import class_difference
from .checkpoint import CLASSES_KEY
from .config import _dataset_names_in
from .test_set import check_trained_classes, class_names_of_loader, class_names_of_test_set

__all__ = ["ModelClasses", "check_checkpoint_classes", "check_resumed_classes", "check_test_set_classes",
           "checkpoint_classes", "model_classes", "note_fine_tuned_classes", "training_classes"]

logger = logging.getLogger(__name__)


def checkpoint_classes(extra, source):
    """The class names the checkpoint ``source`` records (``extra``: what the checkpointer's ``load`` returns
    besides the weights), as a list of str; None when it records none. A CheckpointError (one line) when the entry
    is not a list of names: its classes would otherwise go unchecked."""
    if not extra or extra.get(CLASSES_KEY) is None:
        return None
    names = extra[CLASSES_KEY]
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise CheckpointError(f"cannot use checkpoint {source}: its {CLASSES_KEY} entry is a "
                              f"{type(names).__name__} ({str(names)[:60]}), not a list of class names")
    return list(names)


def check_checkpoint_classes(trained, classes, source, dataset, use, otherwise="", kind="checkpoint"):
    """Raises CheckpointError (one line) when the checkpoint ``source`` was trained on the classes ``trained`` and
    the dataset ``dataset`` (``(role, name)``, e.g. ``("the test set", "trees_val")``; name None when unknown)
    names its classes ``classes`` otherwise (another order, other names): ``use`` (e.g. "the evaluation would score
    the model's classes") would take the model's class i for the dataset's. Either list None (not recorded, or no
    class names) is not compared. ``otherwise``: another way out, ending the message after the json's fix.
    ``kind``: what ``source`` is, "checkpoint" or "graph" (an exported graph, whose model.json records them)."""
    if trained is None or classes is None:
        return
    difference = class_difference(trained, classes)
    if difference is None:
        return
    index, theirs, ours = difference
    role, name = dataset
    raise CheckpointError(
        f"{kind} {source} and {role}{f' {name}' if name else ''} name their classes differently: class {index} is "
        f"{theirs} in the {kind} and {ours} in {name or 'the dataset'}; {use} as {name or 'the dataset'}'s "
        f"classes of the same index (give its json the {kind}'s classes, {_shown(trained)}, with ids in this "
        f"order: classes are numbered in the order of their ids){otherwise}")


def _shown(names, most=10):
    shown = ", ".join(repr(name) for name in names[:most])
    return shown + (f", ... ({len(names) - most} more)" if len(names) > most else "")


def _first_dataset(loader_node):
    names = _dataset_names_in(loader_node) if loader_node is not None else []
    return names[0] if names else None


def _test_loader(cfg):
    return (cfg.get("dataloader", None) or {}).get("test", None)


def check_test_set_classes(cfg, trained, source, use, kind="checkpoint"):
    """:func:`check_checkpoint_classes` of the classes ``trained`` that checkpoint ``source`` (or graph: ``kind``)
    records against the config's test set (``dataloader.test``), whose classes are read only then: a checkpoint
    that records none reads nothing more than before."""
    if trained is None:
        return
    test = _test_loader(cfg)
    check_checkpoint_classes(trained, class_names_of_loader(test), source, ("the test set", _first_dataset(test)), use,
                             kind=kind)


class ModelClasses(NamedTuple):
    """What :func:`model_classes` found: the ``names`` of the model's classes in the order of its outputs (None:
    unknown); whether they are the config's test set's (``from_test_set``: its metadata and category ids describe
    them), else the recorded ones; and ``error``, why the config's datasets named none (a dataset that cannot be
    read here, or a training set naming them otherwise than the test set, with nothing recorded), else None."""

    names: Optional[List[str]]
    from_test_set: bool
    error: Optional[Exception]


def model_classes(cfg, recorded, source, use, kind="checkpoint") -> ModelClasses:
    """The names of the model's classes for a command that names its outputs (the demo's labels, model.json, the
    predictor's metadata): the config's test set's, refused (CheckpointError, :func:`check_checkpoint_classes`, with
    ``use``) when the checkpoint ``source`` (or graph: ``kind``) records them otherwise (``recorded``; None: it
    records none); the recorded names when the test set names none or cannot be read here. With nothing recorded,
    a test set that names the classes otherwise than the training set (:func:`~.test_set.check_trained_classes`)
    gives no names and that error: the model's classes are the training set's."""
    try:
        names = class_names_of_test_set(cfg)
    except (ValueError, OSError, KeyError) as error:  # not registered, its json missing or broken
        return ModelClasses(recorded, False, error)
    check_checkpoint_classes(recorded, names, source, ("the test set", _first_dataset(_test_loader(cfg))), use,
                             kind=kind)
    try:
        check_trained_classes(cfg)
    except (ValueError, OSError, KeyError) as error:
        if recorded is None:
            return ModelClasses(None, False, error)
        # the recorded names, which the test set's equal, are the model's whatever the config's training set says
    if not names:
        return ModelClasses(recorded, False, None)
    return ModelClasses(names, True, None)


def training_classes(cfg):
    """The class names of the config's training set (the first dataset of ``dataloader.train``), which a training
    run records in its checkpoints; None when it names none."""
    return class_names_of_loader((cfg.get("dataloader", None) or {}).get("train", None))


def check_resumed_classes(cfg, extra, source, classes):
    """A resume continues the run of checkpoint ``source`` (``extra``: its entries besides the weights): raises
    CheckpointError when the training set now names its classes ``classes`` otherwise than the run did (a json
    re-exported with other category ids); the training would go on teaching the model's class i another class, and
    its evaluations would score it as that one."""
    train = (cfg.get("dataloader", None) or {}).get("train", None)
    check_checkpoint_classes(checkpoint_classes(extra, source), classes, source,
                             ("the training set", _first_dataset(train)),
                             "the resumed training and its evaluations would take the model's classes",
                             f"; to train it on these classes, start a new run from it (train.init_checkpoint={source} "
                             "in another train.output_dir)")


def note_fine_tuned_classes(extra, source, classes):
    """An INFO line when the initial weights ``source`` of a new run were trained on other classes than its
    training set's ``classes``: expected when fine-tuning on a new dataset, said once for a run that did not mean
    to (the same count of classes loads the class heads as they are)."""
    trained = checkpoint_classes(extra, source)
    difference = class_difference(trained, classes) if trained is not None and classes is not None else None
    if difference is not None:
        index, theirs, ours = difference
        logger.info(f"train.init_checkpoint {source} was trained on other classes (class {index} is {theirs} there "
                    f"and {ours} here): this run fine-tunes it on the training set's classes")
