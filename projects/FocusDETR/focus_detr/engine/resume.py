"""Where a training run resumes from, what is refused before the set-up writes into its folder, and what a run that
stops before its end (a user error in a batch, a diverging loss, a step out of memory, a failed evaluation) saves
and says: the checkpoint, and the command that continues or evaluates it."""
import contextlib
import logging
import os
from typing import NamedTuple, Optional

import torch
from detectron2.utils import comm

from ..checkpoint.checkpointer import check_weights_path
from .agreement import ProcessFailed
from .checkpoint import CheckpointNotSavedError, atomic_write, read_checkpoint_tag
from .cli import MAX_MESSAGE_CHARS, is_user_error, one_line
from .config import ConfigError
from .interrupt import evaluation_command
from .output_lock import names_file
from .settings import check_output_outside_tree_cache, check_seed, require_sections, resolve_device
from .test_set import check_evaluator_settings
from .trainer import DataLoadingFailed, StepOutOfMemory, TrainingDiverged

__all__ = ["check_before_setup", "checkpoint_not_saved_error", "final_evaluation_error", "keep_training_config",
           "killed_process_error", "nothing_to_resume", "resume_point", "run_record_kept",
           "save_before_failed_iteration"]

logger = logging.getLogger(__name__)

# What a training run leaves in its folder: a checkpoint, or the records of one killed before its first checkpoint.
_TRAINING_FILES = ("last_checkpoint", "metrics.json")
# What a run writes as it makes progress: while none of these changed, it has added nothing to the folder's record.
_PROGRESS_FILES = _TRAINING_FILES + ("eval_results.json",)


def nothing_to_resume(cfg, start_iter):
    return ConfigError(
        f"nothing to resume in {cfg.train.output_dir}: its last checkpoint is at iteration {start_iter} and "
        f"train.max_iter is {cfg.train.max_iter}; raise train.max_iter to train longer (the learning-rate "
        "schedule's milestones, fractions of train.max_iter, move with it)"
    )


def check_before_setup(cfg, resume=False, eval_only=False):
    """The refusals that need no model, made before detectron2's set-up writes ``config.yaml`` and ``log.txt`` into
    ``train.output_dir``, so that a refused command leaves a finished run's record as it was: a resume of a run that
    is complete, an evaluation of a weights file that does not exist or without an evaluator, evaluator settings
    that cannot work, a device this machine lacks. (The same checks run again later, with the model, for callers that
    skip this one; train_net.py makes them before it creates the folder too.) Also checks ``train.seed``, which the
    set-up uses, and that the folder is outside the tree data's cache. Returns the :class:`ResumePoint` a training
    ``resume`` continues from (None: none, or not a training resume)."""
    check_seed(cfg.train)
    resolve_device(cfg.train.get("device", "auto"))  # train.device=mps had written config.yaml and log.txt
    check_output_outside_tree_cache(cfg.train.output_dir)
    if eval_only:  # a config without test data says so, not that its (absent) evaluator is missing
        require_sections(cfg, ("dataloader.test",), "evaluation")
    check_evaluator_settings(cfg, required_by="--eval-only" if eval_only else None)
    if eval_only:
        if not resume:
            check_weights_path(cfg.train.get("init_checkpoint", ""))
        return None
    point = resume_point(cfg.train.output_dir) if resume else None
    if point is not None and point[1] >= cfg.train.max_iter:
        raise nothing_to_resume(cfg, point[1])
    return point


def _progress_marks(output_dir):
    marks = []
    for name in _PROGRESS_FILES:
        try:
            status = os.stat(os.path.join(output_dir, name))
            marks.append((status.st_size, status.st_mtime_ns))
        except OSError:
            marks.append(None)
    return marks


@contextlib.contextmanager
def run_record_kept(output_dir):
    """Puts an earlier run's ``config.yaml`` in ``output_dir`` back when the command in the block fails before it
    wrote a checkpoint, a metrics record or results. detectron2's set-up replaces that file before the model is
    built, so a command refused after it (a model setting out of range, a resume whose checkpoints cannot be read)
    left the earlier run's weights described by the refused command's config. Not into a folder removed or replaced
    meanwhile: the earlier run went with it (and its progress files, whose absence looked like no progress), and the
    file made the folder again. On the main process only (the one the set-up writes from). Yields the earlier
    ``config.yaml``'s bytes (None: there was none), for :func:`keep_training_config`."""
    path = os.path.join(output_dir, "config.yaml") if output_dir and comm.is_main_process() else None
    folder = None  # held open: a folder made in place of a removed one could otherwise get its inode number
    try:
        with open(path, "rb") as f:
            earlier = f.read()
        folder = os.open(output_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (OSError, TypeError):  # none yet (or no folder): nothing to keep
        earlier = None
    marks = _progress_marks(output_dir) if earlier is not None else None
    try:
        yield earlier
    except BaseException:
        if earlier is not None and names_file(output_dir, os.fstat(folder)) and _progress_marks(output_dir) == marks:
            atomic_write(path, lambda f: f.write(earlier))
        raise
    finally:
        if folder is not None:
            os.close(folder)


def keep_training_config(output_dir, earlier):
    """After detectron2's set-up of an evaluation wrote its config as ``config.yaml`` into ``output_dir``: when the
    folder holds a training run (:data:`_TRAINING_FILES`) whose ``config.yaml`` was ``earlier`` (bytes), puts that
    back and saves the evaluation's as ``eval_config.yaml``. The run's config was lost otherwise (an evaluation with
    another keep ratio left the run described by it). Returns whether it did."""
    if earlier is None or not any(os.path.isfile(os.path.join(output_dir, name)) for name in _TRAINING_FILES):
        return False
    path = os.path.join(output_dir, "config.yaml")
    os.replace(path, os.path.join(output_dir, "eval_config.yaml"))
    atomic_write(path, lambda f: f.write(earlier))
    logger.info(f"--eval-only into a training run's folder: {path} stays the run's config; this evaluation's is "
                "eval_config.yaml")
    return True


class ResumePoint(NamedTuple):
    checkpoint: str
    next_iteration: int
    max_iter: Optional[int]  # the train.max_iter it was trained for (None: a checkpoint from before it was saved)


def resume_point(output_dir):
    """The :class:`ResumePoint` of ``output_dir``: the checkpoint a resume starts from (the one its
    ``last_checkpoint`` names), the iteration it continues at (that checkpoint's + 1) and the run's length; None when
    that cannot be told cheaply (no checkpoint, an unreadable or foreign one: the resume itself reports those)."""
    name, _ = read_checkpoint_tag(output_dir)
    if name is None:
        return None
    path = os.path.join(output_dir, name)
    try:
        # memory-mapped: the weights are not read, only the small records
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        iteration, max_iter = checkpoint.get("iteration"), checkpoint.get("max_iter")
    except Exception:  # noqa: BLE001 (anything unreadable is left to the resume, which names it)
        return None
    if not _is_count(iteration):
        return None
    return ResumePoint(path, iteration + 1, max_iter if _is_count(max_iter) else None)


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool)


def killed_process_error(exited, output_dir, command=None, training=True):
    """The one-line error (a ``ChildProcessError``, a user error of the machine) for a started process that SIGKILL
    ended (``kill -9``, the out-of-memory killer): which process, and for training the checkpoint in ``output_dir``
    a resume starts from (none named without ``output_dir``: another machine's folder) and the command. torch's own
    report was two tracebacks. ``exited``: torch's ``ProcessExitedException``."""
    message = (f"process {exited.error_index} (pid {exited.error_pid}) was killed by {exited.signal_name} (kill -9, "
               "or the out-of-memory killer: see dmesg); the others stopped")
    if training:
        if output_dir:
            point = resume_point(output_dir)
            where = (f"a resume continues at iteration {point[1]} from {point[0]}" if point is not None
                     else "no readable checkpoint yet: a resume starts from scratch")
            message += f"; {where}"
        message += "; " + (f"resume with: {command}" if command else "continue it with --resume")
    return ChildProcessError(message)


def _stop_error(error, where, state, then, default_fix, error_type=ValueError):
    """The error a stopped run raises for ``error``: for a user error, ``error_type`` with its line, ``where`` it
    happened, the ``state`` training is saved in, its remedy (``default_fix`` when it has none) and ``then`` (what to
    run once mended); for a bug (it keeps its traceback, chained above this one), a RuntimeError saying the same,
    its line led by its type."""
    line = one_line(error, MAX_MESSAGE_CHARS)
    if is_user_error(error):
        fix = getattr(error, "remedy", None) or default_fix
        return error_type(f"{line}{where}; {state}: {fix}, then {then}")
    return RuntimeError(f"{type(error).__name__}: {line}{where}; {state}: mend what the traceback above shows, "
                        f"then {then}")


def final_evaluation_error(error, checkpoint, resume_command):
    """The error to raise for an error (a user error, or a bug: it keeps its traceback) in the evaluation after the
    last iteration: the original line, and that training is complete, where it is saved and how to evaluate it once
    the error is mended."""
    redo = f"evaluate with: {evaluation_command(resume_command, checkpoint)}" if resume_command else (
        f"evaluate it with --eval-only train.init_checkpoint={checkpoint}")
    return _stop_error(error, " (in the evaluation at the end of training)",
                       f"training is complete and saved in {checkpoint}", redo, "fix what it names")


def save_before_failed_iteration(error, trainer, checkpoint_hook, eval_hook, start_iter, resume_command):
    """When ``error`` stopped training in a way a resume can mend, saves the iterations completed and returns the
    error to raise instead: the original line, the checkpoint and how to resume.

    That is a user error in loading an iteration's batch (a corrupt image hours into a run), a diverging loss or a
    step out of memory (neither step was applied): saved are the iterations before it, with the RNG state and data
    position it began with, so a resume repeats it; or any error in an evaluation during training (an unreadable
    test image; a bug too, which keeps its traceback), which ran after its iteration and before that iteration's
    checkpoint: saved is that iteration, whose evaluation is lost (the first evaluation of the configs comes with
    their first checkpoint: a failure lost all of it). None when there is nothing to add: another kind of error, or
    nothing completed since the last save. With several processes, only for the errors they all raise together (the
    save is collective)."""
    diverged = isinstance(error, TrainingDiverged)
    step_failed = diverged or isinstance(error, StepOutOfMemory)  # before the optimiser step: nothing applied
    data_failed = trainer.data_failed_at == trainer.iter or isinstance(error, DataLoadingFailed)
    evaluation = eval_hook.failed_at is not None and eval_hook.failed_at == trainer.iter
    several = comm.get_world_size() > 1
    completed = trainer.iter if evaluation else trainer.iter - 1
    if (
        not (step_failed or evaluation or data_failed)
        or completed < start_iter
        or not (evaluation or is_user_error(error))
        or (several and not isinstance(error, (ProcessFailed, TrainingDiverged)))  # those all raise together
        or not checkpoint_hook.checkpointer.save_dir
    ):
        return None
    if not evaluation:
        trainer.rewind_to_step_start()  # a resume repeats this iteration: its batch, its random draws
    trainer.iter = completed  # what the checkpoint records (the trainer is done with: training ended)
    where = f" (in the evaluation after iteration {completed})" if evaluation else ""
    try:
        checkpoint_hook.save_current_iteration()
    except CheckpointNotSavedError as not_saved:  # a full disk: the line still names the error and the resume
        state = f"training stopped after iteration {completed} and {one_line(not_saved, MAX_MESSAGE_CHARS)}"
        then = _once_writable(checkpoint_hook.checkpointer.save_dir, resume_command)
    else:
        state = (f"training stopped after iteration {completed}, checkpoint {checkpoint_hook.last_saved[1]} (a "
                 f"resume continues at iteration {completed + 1})")
        then = _resume_with(resume_command)
    return _stop_error(error, where, state, then, "fix or remove what it names",
                       TrainingDiverged if diverged else ValueError)


def _resume_with(resume_command):
    return f"resume with: {resume_command}" if resume_command else "continue with --resume"


def _once_writable(output_dir, resume_command):
    return f"once {output_dir} can be written again, {_resume_with(resume_command)}"


def checkpoint_not_saved_error(error, output_dir, resume_command):
    """The error to raise for ``error``, a :class:`CheckpointNotSavedError` of a save during training (a full disk,
    a folder no longer writable): its line, and how to resume once ``output_dir`` can be written again (with
    ``resume_command``, else ``--resume``). A stop that saves what it trained says the same when that save fails
    (:func:`save_before_failed_iteration`)."""
    return CheckpointNotSavedError(f"{error}; {_once_writable(output_dir, resume_command)}")
