"""What ``train_net.py --eval-only`` runs: the weights it evaluates (a file, or with ``--resume`` the run's last
checkpoint), the evaluation, and its results file, with nothing of an earlier evaluation left beside them."""
import logging
import os

from detectron2.utils import comm
from omegaconf import DictConfig

from .checkpoint import AtomicDetectionCheckpointer, same_file
from .cli import warn_on_stderr
from .config import ConfigError
from .evaluation import evaluate, write_eval_results
from .checkpoint_classes import check_test_set_classes
from .inference_weights import read_inference_weights
from .runner import build_model, wrap_ddp
from .settings import require_sections, resolve_device
from .test_set import (check_evaluation_datasets, check_evaluator_settings, check_model_classes,
                       check_same_input_format, check_test_images, check_trained_classes, evaluator_nodes)

__all__ = ["run_evaluation"]

logger = logging.getLogger(__name__)


# COCOEvaluator's files, which it writes into its output_dir.
_EVALUATOR_FILES = ("coco_instances_results.json", "instances_predictions.pth")


def _remove_earlier_results(cfg):
    """An earlier evaluation's results in ``train.output_dir`` must not outlive an interrupted or failed one next to
    this evaluation's config (the visualising tools would draw the earlier model's detections as this one's): its
    ``eval_results.json``, and COCOEvaluator's files where the evaluator writes into that folder (never another
    folder's, which may be another run's)."""
    folder = cfg.train.output_dir
    if not folder:  # no output: nothing of an earlier evaluation to remove (not the working folder's files)
        return
    names = ["eval_results.json"]
    for key, evaluator in evaluator_nodes(cfg):
        evaluator_folder = evaluator.get("output_dir", None) if isinstance(evaluator, DictConfig) else None
        if evaluator_folder and same_file(evaluator_folder, folder):
            names += [name for name in _EVALUATOR_FILES if name not in names]
        elif evaluator_folder:  # (a detrex-style copy of train.output_dir follows its override: config.apply_overrides)
            logger.warning(f"{key}.output_dir {evaluator_folder} is not train.output_dir {folder}: the "
                           f"evaluator writes {' and '.join(_EVALUATOR_FILES)} there")
    removed = [name for name in names if os.path.isfile(os.path.join(folder, name))]
    for name in removed:
        os.remove(os.path.join(folder, name))
    if removed:
        logger.info(f"Removed the earlier {', '.join(removed)} from {folder}: this evaluation replaces them")


def run_evaluation(cfg, resume=False, init_checkpoint_given=True):
    """Loads ``cfg.train.init_checkpoint`` (our, official detrex, or EMA weights when enabled), or with ``resume``
    the last checkpoint in ``cfg.train.output_dir`` (detectron2's ``--eval-only --resume``), and evaluates. Writes
    ``eval_results.json`` in ``cfg.train.output_dir``; returns the results dict. ``init_checkpoint_given``: the
    user named ``train.init_checkpoint`` (on the command line), so that ``resume`` not evaluating it is a warning;
    else the config's own (a backbone initialisation) and an INFO line."""
    require_sections(cfg, ("dataloader.test",), "evaluation")
    check_evaluator_settings(cfg, required_by="--eval-only")
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, device)
    # before the weights: a class count that does not fit the data says so, not "the checkpoint does not fit"
    check_evaluation_datasets(cfg)
    try:  # the model's classes are the training set's, unless its checkpoint records them (read below)
        check_trained_classes(cfg)
        training_set_differs = None
    except ConfigError as error:
        training_set_differs = error
    try:
        check_model_classes(model, cfg.dataloader.test)
    except ValueError:
        if training_set_differs is not None:  # the cause, where the count would name the test set's
            raise training_set_differs from None
        raise
    # the config's training mapper is what the weights learnt from, as in training (AP 0.069 -> 0.033 on the trees)
    check_same_input_format(cfg.dataloader.get("train", None), cfg.dataloader.test)
    # before the weights and the inference, which found a missing image only when it reached it
    check_test_images(cfg, "the evaluation")
    model = wrap_ddp(model, cfg, device)  # its set-up gives every process rank 0's weights (random ones differ)
    weights = cfg.train.init_checkpoint
    run = AtomicDetectionCheckpointer(model, cfg.train.output_dir) if cfg.train.output_dir else None
    last, problems = run.last_checkpoint() if run is not None else (None, [])
    if resume:
        if problems and last is not None:
            warn_on_stderr(f"evaluating {last}, the newest checkpoint of train.output_dir, instead of: "
                           + "; ".join(problems), logger)
        if last is None:
            raise ConfigError(f"--eval-only --resume evaluates the last checkpoint in train.output_dir "
                              f"{cfg.train.output_dir}, which holds none; or evaluate a file: train.init_checkpoint=FILE")
        if weights and not same_file(weights, last):
            not_evaluated = (f"train.init_checkpoint {weights} is not evaluated: --eval-only --resume evaluates the "
                             f"last checkpoint of train.output_dir, {last}")
            if init_checkpoint_given:
                warn_on_stderr(f"{not_evaluated}; without --resume the file is evaluated", logger)
            else:
                logger.info(not_evaluated)
        weights = last
        logger.info(f"Evaluating the last checkpoint of {cfg.train.output_dir}: {weights}")
    elif not weights:
        warn_on_stderr("train.init_checkpoint is empty: evaluating randomly initialised weights (set "
                       "train.init_checkpoint=FILE, or add --resume for the last checkpoint in train.output_dir)",
                       logger)
    elif last is not None and not same_file(os.path.dirname(weights) or ".", cfg.train.output_dir):
        # e.g. --eval-only with a fine-tuned run's own config.yaml, whose init_checkpoint is what it started from;
        # any file of the run's own folder (an earlier checkpoint, model_final.safetensors) is the run's
        warn_on_stderr(f"train.output_dir {cfg.train.output_dir} holds a training run (its last checkpoint: {last}) "
                       f"but train.init_checkpoint {weights} is evaluated, and its results replace the run's; "
                       "--resume evaluates the run's own model", logger)
    loaded = read_inference_weights(model, cfg, weights)
    if loaded.thing_classes is None and training_set_differs is not None:
        raise training_set_differs
    # the same number of classes in another order loads without a mismatch, and would be scored as the test set's
    check_test_set_classes(cfg, loaded.thing_classes, weights, "the evaluation would score the model's classes")
    if comm.is_main_process():
        _remove_earlier_results(cfg)
    results = evaluate(cfg, model)
    if comm.is_main_process() and cfg.train.output_dir:
        os.makedirs(cfg.train.output_dir, exist_ok=True)
        write_eval_results(os.path.join(cfg.train.output_dir, "eval_results.json"), results)
    return results
