"""Building the model and running training from a LazyConfig (what ``train_net.py`` calls on every process;
``--eval-only``: :mod:`.evaluation_run`)."""
import gc
import inspect
import logging
import os
import signal

import torch
from detectron2.config import instantiate
from detectron2.engine import create_ddp_model, default_writers, hooks
from detectron2.utils import comm
from detectron2.utils.events import TensorboardXWriter
from omegaconf import OmegaConf

from ..checkpoint import CheckpointError
from .checkpoint import AtomicDetectionCheckpointer, CheckpointNotSavedError
from .checkpoint_classes import check_resumed_classes, note_fine_tuned_classes, training_classes
from ..layers.ms_deform_attn_backends import backend_summary
from .cli import raised_in_this_package, user_errors_without_tracebacks, warn_on_stderr
from .config import ConfigError
from .evaluation import evaluate
from .hooks import (EMAHook, IsolatedRngEvalHook, ProgressWriter, ReleaseFreedMemoryHook, ResumableCheckpointHook,
                    check_lr_multiplier, restore_rank_state, schedule_change_warning)
from .inference_weights import ema_settings
from .interrupt import StopOnRequestHook, TrainingFinishedInterrupted, TrainingInterrupted, evaluation_command
from .memory import set_mmap_threshold
from .metrics_log import cut_incomplete_last_line, drop_records_from
from .optim import build_optimizer, optimizer_settings, restore_optimizer_settings
from .rng import restore_rng_state
from .settings import check_free_space, check_schedule, require_sections, resolve_device
from .cuda_graphs import inference_cuda_graphs
from .precision import inference_amp_dtype, training_amp_dtype
from .resume import (checkpoint_not_saved_error, final_evaluation_error, nothing_to_resume,
                     save_before_failed_iteration)
from .test_set import build_loader, check_model_classes, check_test_set
from .trainer import DetrTrainer

__all__ = ["build_model", "end_process_group", "run_training", "wrap_ddp"]

logger = logging.getLogger(__name__)


def build_model(cfg, device=None):
    """Instantiates ``cfg.model`` on ``device`` (checked: "cuda" without a GPU is one line, not torch's driver
    error; default: ``cfg.train.device``, "auto" when absent)."""
    require_sections(cfg, ("model",), "building the model")  # model=null on the command line
    if device is None:
        device = resolve_device((cfg.get("train", None) or {}).get("device", "auto"))
    else:
        device = resolve_device(device, "device", "device='cpu'")
    try:
        model = instantiate(cfg.model)
    except (AssertionError, KeyError, IndexError, TypeError, ValueError) as error:
        # detectron2's and torch's parts check their settings with assertions, lookups and messages (a stage of 0
        # blocks: "AssertionError: 0"; depth 42: "KeyError: 42"; "num_channels (16) must be divisible by num_groups
        # (32)") that name neither the part nor the setting; this package's own ValueErrors name them already
        if isinstance(error, ValueError) and raised_in_this_package(error):
            raise
        raise ConfigError(f"the config's model cannot be built: {_failing_part(error)} failed with "
                          f"{type(error).__name__}: {error}; check the settings you gave it (model.*)") from None
    if not isinstance(model, torch.nn.Module):  # e.g. a config.yaml cut short: its model section lost its _target_
        raise ConfigError(f"the config's model builds a {type(model).__name__}, not an nn.Module (no model._target_: "
                          "a saved config.yaml cut short?)")
    model.to(device)
    logger.info(f"Model on {device}:\n{model}")
    logger.info(backend_summary(device))
    # results are bit-identical only at one thread count, and busy-waiting threads slow a shared machine
    logger.info(f"CPU threads: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op "
                f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
                f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})")
    return model


def _failing_part(error):
    """The class (or function) that LazyConfig's ``instantiate`` was building when ``error`` was raised: the innermost
    ``instantiate`` call on the traceback that had resolved its target."""
    part, traceback = "a part of the model", error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == "instantiate" and "cls_name" in frame.f_locals:
            part = frame.f_locals["cls_name"]
        traceback = traceback.tb_next
    return part


def wrap_ddp(model, cfg, device):
    """DistributedDataParallel when running several processes (CPU processes use gloo, ``device_ids=None``) with
    ``cfg.train.ddp``'s arguments. detrex's ``broadcast_buffers`` is passed as ``forward_sync_buffers`` where torch
    has it (it deprecates the former with a warning from every process); the buffers are then also copied from
    rank 0 when the wrapper is built, as the parameters always are."""
    ddp_kwargs = dict(cfg.train.get("ddp", {}))
    if torch.device(device).type == "cpu":
        ddp_kwargs["device_ids"] = None
        if ddp_kwargs.pop("fp16_compression", False) and comm.get_world_size() > 1:
            logger.warning("train.ddp.fp16_compression sends the gradients between GPUs in float16; CPU "
                           "processes (gloo) exchange them in float32")
    if "broadcast_buffers" in ddp_kwargs and "forward_sync_buffers" not in ddp_kwargs and _ddp_accepts(
        "forward_sync_buffers"
    ):
        ddp_kwargs["forward_sync_buffers"] = ddp_kwargs.pop("broadcast_buffers")
    return create_ddp_model(model, **ddp_kwargs)


def _ddp_accepts(argument):
    return argument in inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters


def end_process_group() -> None:
    """Tears down this process's process group, if any, before the process ends. Left to interpreter shutdown,
    gloo's threads are sometimes destroyed while still joinable, and the process aborts (SIGABRT, "terminate
    called without an active exception") after its work is done: 1 in 8 two-process runs of the DDP test did,
    0 in 16 with it. The training's DDP wrapper holds the group too and is still alive here, in a reference cycle
    with the trainer, so the group went only when that cycle was collected, possibly during interpreter shutdown:
    the likely cause of the abort still seen in about 1 of 40 two-process runs. It is collected first."""
    gc.collect()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _checkpoint_bytes(model, optimizer):
    """About the size of one training checkpoint: the weights and, per weight, what the optimizer keeps (AdamW: two
    moments)."""
    weights = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    states_per_weight = 2 if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) else 1
    return weights * (1 + states_per_weight)


def build_trainer(cfg, model, data_loader, optimizer, device, amp_dtype):
    """The :class:`DetrTrainer` that ``train_net.py`` trains with: ``cfg.train.clip_grad`` and the autocast
    ``amp_dtype`` (None: float32) on ``device``; no clipping for a config without ``train``."""
    clip = (cfg.get("train", None) or {}).get("clip_grad", None) or {}
    return DetrTrainer(
        model,
        data_loader,
        optimizer,
        clip_grad_max_norm=clip["params"]["max_norm"] if clip.get("enabled", False) else None,
        clip_grad_norm_type=clip.get("params", {}).get("norm_type", 2.0),
        amp_dtype=amp_dtype,
        device_type=torch.device(device).type,
    )


def run_training(cfg, resume=False, stop_request=None, resume_command=None, output_claim=None):
    """Trains ``cfg.model`` for ``cfg.train.max_iter`` iterations (continuing from the last checkpoint in
    ``cfg.train.output_dir`` when ``resume``). Returns the trainer.

    With ``stop_request`` (an active :class:`~focus_detr.engine.interrupt.StopRequest`), a SIGINT / SIGTERM ends
    training after the current iteration with a checkpoint saved there. An interrupted run (also by a plain
    KeyboardInterrupt) raises :class:`~focus_detr.engine.interrupt.TrainingInterrupted`, whose message names the
    iteration, the checkpoint a resume starts from and ``resume_command``; once training is complete and saved, a
    stop (of the final evaluation, or after it) raises
    :class:`~focus_detr.engine.interrupt.TrainingFinishedInterrupted`.

    ``output_claim``: the :class:`~focus_detr.engine.output_lock.OutputDirClaim` the run holds on
    ``cfg.train.output_dir``; each save checks it, and stops the run when the folder was removed or replaced.
    """
    require_sections(cfg, ("optimizer", "lr_multiplier", "dataloader.train"), "training")
    if cfg.dataloader.get("evaluator", None) is not None:
        require_sections(cfg, ("dataloader.test",), "the evaluation during training")
    check_schedule(cfg.train)
    device = resolve_device(cfg.train.device)
    if cfg.train.get("malloc_mmap_threshold_mib", 0):
        set_mmap_threshold(cfg.train.malloc_mmap_threshold_mib)
    model = build_model(cfg, device)
    optimizer = build_optimizer(cfg, model)
    train_loader = build_loader(cfg, "train")
    # before the first step: a class count that does not fit the data would crash only at the first evaluation
    check_model_classes(model, cfg.dataloader.train)
    classes = training_classes(cfg)  # recorded in the checkpoints, for the commands that name the outputs later
    evaluates = cfg.dataloader.get("evaluator", None) is not None
    if evaluates:  # the final evaluation runs whatever train.eval_period
        check_test_set(cfg, model)
    model = wrap_ddp(model, cfg, device)

    amp_dtype = training_amp_dtype(cfg, device)
    inference_amp_dtype(cfg, device)  # checked now, not at the first evaluation
    inference_cuda_graphs(cfg)
    trainer = build_trainer(cfg, model, train_loader, optimizer, device, amp_dtype)
    # train.init_checkpoint may be a detector trained on other classes: fine-tuning keeps all but its class heads
    checkpointer = AtomicDetectionCheckpointer(model, cfg.train.output_dir, output_claim=output_claim, trainer=trainer,
                                               other_class_count=True, thing_classes=classes)
    if comm.is_main_process():
        checkpointer.remove_stale_temporary_files()  # left by a save that was killed midway

    ema_enabled, ema_decay, ema_for_eval = ema_settings(cfg)
    ema_hook = EMAHook(model, ema_decay) if ema_enabled else None

    def evaluate_current_model():
        if output_claim is not None:  # the evaluator writes its predictions there, creating a removed folder again
            output_claim.check(f"the evaluation after iteration {trainer.iter} is not run, nor its checkpoint written")
        if ema_hook is not None and ema_for_eval:
            with ema_hook.weights_applied():
                return evaluate(cfg, model)
        return evaluate(cfg, model)

    eval_hook = IsolatedRngEvalHook(cfg.train.eval_period, evaluate_current_model)
    # after the hooks before it, so a checkpoint holds the state they leave behind
    checkpoint_hook = ResumableCheckpointHook(
        checkpointer,
        cfg.train.checkpointer.period,
        data_loader=train_loader,
        max_to_keep=cfg.train.checkpointer.get("max_to_keep", None),
    )

    final_weights_failures = []

    def save_final_weights(trainer):
        # with the final checkpoint, before the final evaluation, which a signal may stop (the file was then missing)
        if trainer.iter >= trainer.max_iter - 1 and comm.is_main_process():
            weights = ema_hook.shadow if ema_hook and ema_for_eval else None  # the weights an evaluation uses
            try:
                checkpointer.save_weights("model_final.safetensors", weights)
            except CheckpointError as error:  # a full disk: the evaluation still runs, then the run ends with this
                logger.warning(f"{error}; the final evaluation runs first")
                final_weights_failures.append(error)

    final_weights_hook = (hooks.CallbackHook(after_step=save_final_weights)
                          if cfg.train.checkpointer.get("save_safetensors", False) else None)
    if comm.is_main_process() and cfg.train.output_dir:
        # a full disk is found now, not at the first save after hours of training
        check_free_space(cfg.train.output_dir, needed_bytes=_checkpoint_bytes(model, optimizer),
                         needed_for="one checkpoint of this model (weights and optimizer state)")
    warmup_length = OmegaConf.select(cfg, "lr_multiplier.warmup_length", default=None)
    if isinstance(warmup_length, (int, float)) and not 0 <= warmup_length < 1:
        # a share of train.max_iter: a negative one switched the warm-up off without a word, 1 or more is fvcore's
        # "where in ParamScheduler must be in [0, 1]"
        raise ConfigError(f"lr_multiplier.warmup_length is the warm-up's share of train.max_iter, in [0, 1), got "
                          f"{warmup_length} (e.g. 1000 iterations of {cfg.train.max_iter}: "
                          f"{1000 / cfg.train.max_iter:.4g})")
    try:
        lr_multiplier = instantiate(cfg.lr_multiplier)
    except (ValueError, TypeError, AssertionError, RuntimeError) as error:  # fvcore's checks name no config key
        raise ConfigError(f"the config's lr_multiplier cannot be built: {error}") from None
    check_lr_multiplier(lr_multiplier)
    # filled once the start is known (_start_records_at): metrics.json is opened only after a resume trimmed it
    writers = [] if comm.is_main_process() else None
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=lr_multiplier),
            ema_hook,
            eval_hook,
            ReleaseFreedMemoryHook(cfg.train.get("release_freed_memory_period", 0)),
            checkpoint_hook,
            final_weights_hook,
            # after the checkpoint hook, so the checkpoint at a stop holds every hook's state; before the writer,
            # whose after_train writes the last iteration's metrics (writing one iteration twice divides by zero
            # in detectron2's ETA estimate)
            StopOnRequestHook(stop_request, checkpoint_hook, resume_command) if stop_request is not None else None,
            ProgressWriter(writers, period=cfg.train.log_period, output_claim=output_claim) if writers is not None
            else None,
        ]
    )

    configured = optimizer_settings(optimizer)
    if resume and not checkpointer.has_checkpoint():
        # a mistyped or moved train.output_dir: a new run would start in its place with detectron2's INFO line only
        start = f"train.init_checkpoint {cfg.train.init_checkpoint}" if cfg.train.init_checkpoint else "random weights"
        warn_on_stderr(f"--resume: train.output_dir {cfg.train.output_dir} has no last_checkpoint to resume from; a "
                       f"new run starts there from {start}", logger)
    extra = checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter, rng_state, extends_finished_run = 0, None, False
    if resume and checkpointer.has_checkpoint():
        check_resumed_classes(cfg, extra, checkpointer.resumed_from, classes)
        start_iter = trainer.iter + 1
        resumed_multiplier = _lr_multiplier_of(optimizer)  # the checkpoint's, before the config's settings return
        changes = restore_optimizer_settings(optimizer, configured)
        if changes:
            logger.warning(f"Resuming with the config's optimizer settings, not the checkpoint's: {', '.join(changes)}")
        if start_iter >= cfg.train.max_iter:
            raise nothing_to_resume(cfg, start_iter)
        schedule_change = schedule_change_warning(lr_multiplier, extra.get("max_iter"), cfg.train.max_iter, start_iter,
                                                  resumed_multiplier)
        if schedule_change:
            logger.warning(schedule_change)
        rng_state = restore_rank_state(extra, train_loader)
        extends_finished_run = extra.get("max_iter") == start_iter
        checkpoint_hook.resume_at(start_iter - 1, checkpointer.resumed_from)
        logger.info(f"Resuming at iteration {start_iter} (RNG and data position {'restored' if rng_state else 'NOT restored'})")
        if cfg.train.init_checkpoint:  # it starts a run; a new run from it goes to another train.output_dir
            logger.info(f"train.init_checkpoint {cfg.train.init_checkpoint} is not loaded: the run continues from "
                        f"{checkpointer.resumed_from}")
    elif cfg.train.init_checkpoint:  # fine-tuning: other classes are expected, and not refused
        note_fine_tuned_classes(extra, cfg.train.init_checkpoint, classes)
    if writers is not None:
        _start_records_at(writers, cfg, start_iter, extends_finished_run)
    if rng_state is not None:
        restore_rng_state(rng_state)  # last, so nothing between here and the first step draws from the generators
    try:
        with user_errors_without_tracebacks():  # a full disk at a save is one line, here and in spawned processes
            trainer.train(start_iter, cfg.train.max_iter)
        if final_weights_failures:
            raise CheckpointError(f"{final_weights_failures[0]}; training is complete and saved in "
                                  f"{checkpoint_hook.last_saved[1]}, and evaluated")
    except TrainingInterrupted:
        raise
    except Exception as error:
        # any error of the final evaluation, a bug too (its traceback stays): the line says training is saved
        if eval_hook.final_evaluation_failed and checkpoint_hook.last_saved is not None:
            raise final_evaluation_error(error, checkpoint_hook.last_saved[1], resume_command) from error
        stopped = save_before_failed_iteration(error, trainer, checkpoint_hook, eval_hook, start_iter,
                                               resume_command)
        if stopped is None and isinstance(error, CheckpointNotSavedError):
            stopped = checkpoint_not_saved_error(error, cfg.train.output_dir, resume_command)
        if stopped is None:
            raise
        raise stopped from error
    except KeyboardInterrupt as interrupt:  # a second Ctrl-C, or a signal once training is complete
        if isinstance(interrupt.__context__, TrainingInterrupted):  # pressed while a stop was being wrapped up
            raise interrupt.__context__ from None
        number = (stop_request.last_signal if stop_request is not None else None) or signal.SIGINT
        last_saved = checkpoint_hook.last_saved
        if last_saved is not None and last_saved[0] >= cfg.train.max_iter - 1:  # training is complete
            # without an evaluator, the final "evaluation" evaluates nothing: there is nothing to redo either way
            pending = evaluates and not eval_hook.final_evaluation_done
            command = evaluation_command(resume_command, last_saved[1]) if resume_command and pending else None
            raise TrainingFinishedInterrupted(number, cfg.train.max_iter, last_saved[1], pending, command) from None
        # the iteration was saved when the signal came during (or right after) its save
        saved_now = last_saved is not None and last_saved[0] == trainer.iter
        where = f"{'after' if saved_now else 'during'} iteration {trainer.iter}"
        raise TrainingInterrupted(number, where, cfg.train.max_iter, last_saved, saved_now=saved_now,
                                  command=resume_command) from None
    return trainer


def _lr_multiplier_of(optimizer):
    """The learning-rate multiplier the schedule last set: rate / base rate of the first parameter group (None before
    detectron2's scheduler has run on it)."""
    group = optimizer.param_groups[0]
    return group["lr"] / group["initial_lr"] if group.get("initial_lr") else None


def _start_records_at(writers, cfg, start_iter, extends_finished_run=False):
    """Fills ``writers`` (the list the PeriodicWriter holds) with detectron2's ``default_writers``, once metrics.json
    is ready to be appended to. The run's records start at ``start_iter``: metrics.json first loses a last line cut
    short and the records of the iterations done again (a resumed run's, or all of those of an earlier run that left
    no checkpoint in the folder), and TensorBoard discards them from the earlier event files (``purge_step``); each
    was shown twice, with other values.

    ``extends_finished_run`` (a longer run resumed from a finished run's last checkpoint): the finished run's final
    evaluation, which detectron2 records at its max_iter (``start_iter``), stays, unless this run evaluates at
    ``start_iter`` itself (two APs of one iteration, after ``start_iter`` and ``start_iter + 1`` steps); in TensorBoard
    too, unless an earlier attempt at this continuation logged ``start_iter``'s training metrics there."""
    output_dir = cfg.train.output_dir
    period = cfg.train.eval_period
    keep_evaluation = extends_finished_run and not (period > 0 and (start_iter + 1) % period == 0
                                                    and start_iter + 1 != cfg.train.max_iter)
    removed, training_logged_at_start = 0, False
    if output_dir:
        cut_incomplete_last_line(output_dir)  # the appended records must not go onto a line cut short
        removed, training_logged_at_start = drop_records_from(output_dir, start_iter, keep_evaluation)
    writers.extend(default_writers(output_dir, cfg.train.max_iter))
    if start_iter > 0 or removed:
        purge_step = start_iter + 1 if keep_evaluation and not training_logged_at_start else start_iter
        for i, writer in enumerate(writers):
            if isinstance(writer, TensorboardXWriter):  # not written yet: its event file is opened at the first write
                writers[i] = TensorboardXWriter(output_dir, purge_step=purge_step)
