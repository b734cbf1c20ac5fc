"""Training hooks: checkpoints that carry every rank's RNG and data position, an EMA of the weights, an
evaluation hook that consumes no randomness of the training run, the periodic return of freed memory, and a writer
that prints no stale progress line after a failed iteration."""
import contextlib
import logging
import math
import os
import re

import torch
from detectron2.engine import HookBase
from detectron2.engine.hooks import EvalHook, PeriodicWriter
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, TensorboardXWriter
from fvcore.common.param_scheduler import ParamScheduler

from .interrupt import stop_signals_deferred
from .memory import release_freed_memory
from .rng import capture_rng_state, isolated_rng

__all__ = ["ResumableCheckpointHook", "EMAHook", "IsolatedRngEvalHook", "ReleaseFreedMemoryHook", "ProgressWriter"]

logger = logging.getLogger(__name__)


class ResumableCheckpointHook(HookBase):
    """Every ``period`` iterations and after the last one, saves the model, the trainer (iteration, optimizer,
    scaler, hook states such as the LR scheduler and EMA) and, gathered from every rank, the RNG states and the
    training data loader's position: everything ``--resume`` needs to continue as if never stopped.

    Must be registered on every rank (the gather is collective); only the main process writes.
    Place it after the hooks whose state it must capture (LR scheduler, EMA, evaluation).

    ``last_saved``: (iteration, path) of the checkpoint a resume would start from (this run's last save, or the one
    it resumed from when the runner sets it); None when there is none.
    """

    def __init__(self, checkpointer, period, data_loader=None, max_to_keep=None, file_prefix="model"):
        if period <= 0:
            raise ValueError(f"checkpointer period must be positive, got {period}")
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or isinstance(max_to_keep, bool)
                                        or max_to_keep < 0):
            raise ValueError(f"train.checkpointer.max_to_keep must be a whole number >= 1, or 0 / None to keep every "
                             f"checkpoint, got {max_to_keep!r}")
        self.checkpointer = checkpointer
        self.period = period
        self.data_loader = data_loader
        self.max_to_keep = max_to_keep
        self.file_prefix = file_prefix
        self.last_saved = None
        self._saved_numbered = []

    def _rank_state(self):
        state = {"rng": capture_rng_state()}
        if self.data_loader is not None and hasattr(self.data_loader, "state_dict"):
            state["data_loader"] = self.data_loader.state_dict()
        return state

    def save(self, name):
        # a signal during the save takes effect once it is written and recorded as the resume point
        with stop_signals_deferred():
            rank_states = comm.all_gather(self._rank_state())
            if comm.is_main_process():
                # max_iter: the schedule is a function of iteration / max_iter, so a resume must know the length
                self.checkpointer.save(name, iteration=self.trainer.iter, max_iter=self.trainer.max_iter,
                                       rank_states=rank_states)
            comm.synchronize()
            if self.checkpointer.save_dir:
                self.last_saved = (self.trainer.iter, os.path.join(self.checkpointer.save_dir, f"{name}.pth"))

    def save_current_iteration(self):
        """Saves the state after the current iteration as a numbered checkpoint (what a periodic save at this
        iteration writes), unless this iteration is saved already. Call it at an iteration boundary (``after_step``
        of a hook placed after this one), on every rank."""
        if self.last_saved is not None and self.last_saved[0] == self.trainer.iter:
            return
        name = f"{self.file_prefix}_{self.trainer.iter:07d}"
        self.save(name)
        self._prune(name)

    def after_step(self):
        iteration = self.trainer.iter
        if iteration >= self.trainer.max_iter - 1:
            self.save(f"{self.file_prefix}_final")
        elif (iteration + 1) % self.period == 0:
            self.save_current_iteration()

    def resume_at(self, iteration, path):
        """A ``--resume`` continues after ``iteration`` from the checkpoint ``path``: that is the last save, and the
        numbered checkpoints of the folder up to it count toward ``max_to_keep`` as if this run had saved them (they
        were never pruned once the run that saved them stopped, so a resumed run kept more than ``max_to_keep``)."""
        self.last_saved = (iteration, path)
        folder = self.checkpointer.save_dir
        numbered = re.compile(rf"^{re.escape(self.file_prefix)}_(\d{{7}})\.pth$")
        names = os.listdir(folder) if comm.is_main_process() and folder and os.path.isdir(folder) else []
        earlier = sorted((int(match.group(1)), name) for name in names
                         if (match := numbered.match(name)) and int(match.group(1)) <= iteration)
        self._saved_numbered = [os.path.join(folder, name) for _, name in earlier]

    def _prune(self, name):
        if not comm.is_main_process() or not self.max_to_keep:
            return
        self._saved_numbered.append(os.path.join(self.checkpointer.save_dir, name + ".pth"))
        while len(self._saved_numbered) > self.max_to_keep:
            old = self._saved_numbered.pop(0)
            if os.path.exists(old) and not old.endswith(f"{self.file_prefix}_final.pth"):
                os.remove(old)


def restore_rank_state(extra_checkpoint_data, data_loader):
    """Puts this rank's data-loader position back from a checkpoint written by :class:`ResumableCheckpointHook`.

    Returns this rank's saved RNG state (restore it with ``rng.restore_rng_state`` right before training starts),
    or None when the checkpoint has none or was written with a different number of processes or images per process:
    then training continues from the right iteration, and the data stream after the samples the run drew (its
    batches and RNG cannot continue), with a warning that says so.
    """
    rank_states = extra_checkpoint_data.get("rank_states")
    if not rank_states:
        return None
    processes = len(rank_states)
    loader_states = [state.get("data_loader") for state in rank_states]
    continues = data_loader is not None and hasattr(data_loader, "load_state_dict") and None not in loader_states
    saved_batch, batch = (loader_states[0] or {}).get("batch_size"), getattr(data_loader, "batch_size", None)
    if processes != comm.get_world_size():
        changed = (f"The checkpoint was written by {_processes(processes)} and this run has "
                   f"{_processes(comm.get_world_size())}")
    elif continues and saved_batch is not None and batch is not None and saved_batch != batch:
        changed = (f"The checkpoint was written with dataloader.train.total_batch_size {saved_batch * processes} "
                   f"({saved_batch} per process) and this run has {batch * processes} ({batch} per process)")
    else:
        state = rank_states[comm.get_rank()]
        if continues:
            data_loader.load_state_dict(state["data_loader"])
        return state["rng"]
    if continues and hasattr(data_loader, "continue_after"):
        data_loader.continue_after(loader_states)
        resumed = ("resuming the iteration, weights, optimizer and schedule, and the data after the images it drew, "
                   "but not its batches or RNG.")
    else:
        resumed = "resuming the iteration, weights, optimizer and schedule, but not the RNG or the data order."
    logger.warning(f"{changed}: {resumed}")
    return None


def _processes(count):
    return f"{count} process" + ("" if count == 1 else "es")


def check_lr_multiplier(lr_multiplier, points=200):
    """Raises ValueError (one line, naming ``lr_multiplier``) when the schedule, evaluated as detectron2 does at
    ``iteration / max_iter`` over the run, fails (a warm-up longer than the run) or gives a multiplier that is
    negative or not finite (a negative one trained by gradient ascent without a word), or is 0 throughout. Other
    schedulers (torch's own) are not checked."""
    if not isinstance(lr_multiplier, ParamScheduler):
        return
    values = []
    for where in [step / points for step in range(points)] + [1 - 1e-9]:  # and the last iteration's
        try:
            value = lr_multiplier(where)
        except (RuntimeError, ValueError, AssertionError) as error:
            raise ValueError(f"lr_multiplier cannot be evaluated over the run: {error}") from None
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"lr_multiplier gives the learning rate a multiplier of {value:g} at {where:.0%} of "
                             "train.max_iter: it must be a finite number >= 0 throughout (check its values and "
                             "warmup_factor)")
        values.append(value)
    if not any(values):  # as optimizer.lr=0: the run would save its initial weights as trained ones
        raise ValueError("lr_multiplier gives the learning rate a multiplier of 0 throughout train.max_iter: the "
                         "training would change no weight (to evaluate the initial weights, use --eval-only)")


def schedule_change_warning(lr_multiplier, trained_max_iter, max_iter, start_iter, resumed_multiplier=None):
    """The line to warn with when a run trained with ``train.max_iter = trained_max_iter`` resumes at ``start_iter``
    with ``max_iter``, or None when the length is unchanged (or unknown: checkpoints from before it was saved).
    ``resumed_multiplier``: the lr multiplier the checkpoint's optimizer holds for ``start_iter``.

    detectron2 evaluates a ParamScheduler at ``iteration / max_iter``, so the config's milestones stretch with
    ``max_iter``: continuing a finished run for longer usually puts the learning rate back up to its pre-decay value.
    """
    if trained_max_iter is None or trained_max_iter == max_iter:
        return None
    line = (f"Resuming a run trained with train.max_iter={trained_max_iter} at train.max_iter={max_iter}: the "
            "learning-rate schedule is a function of iteration / train.max_iter, so its milestones move with it")
    if resumed_multiplier is not None and isinstance(lr_multiplier, ParamScheduler) and start_iter < max_iter:
        now = lr_multiplier(start_iter / max_iter)
        if not math.isclose(now, resumed_multiplier, rel_tol=1e-6):
            line += f"; at iteration {start_iter} the lr multiplier is {now:g} instead of {resumed_multiplier:g}"
    return line


class EMAHook(HookBase):
    """Exponential moving average of the model's floating-point parameters and buffers, updated after every step:
    ``ema = decay * ema + (1 - decay) * weights`` (integer buffers are copied). Its state is saved with the trainer.

    The average starts from the weights training starts from: those of ``train.init_checkpoint`` (or of the resumed
    checkpoint when it holds no average), taken at ``before_train``, after they are loaded; a resumed average is
    kept. Taken at construction, it started from the random initialisation, which a decay of 0.999 keeps 41% of
    after 900 steps.
    """

    def __init__(self, model, decay=0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"model_ema.decay must be in (0, 1), got {decay}")
        self.model = model.module if hasattr(model, "module") else model
        self.decay = decay
        self.shadow = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        self._resumed = False  # whether load_state_dict gave the average a checkpoint's state

    @torch.no_grad()
    def before_train(self):
        if not self._resumed:
            for name, value in self.model.state_dict().items():
                self.shadow[name].copy_(value)

    @torch.no_grad()
    def after_step(self):
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[name].mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                self.shadow[name].copy_(value)

    def state_dict(self):
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state_dict):
        for name, value in state_dict["shadow"].items():
            if name in self.shadow:
                self.shadow[name].copy_(value)
        self._resumed = True

    @contextlib.contextmanager
    def weights_applied(self):
        """Temporarily loads the EMA weights into the model (e.g. for evaluation)."""
        backup = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        self.model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            self.model.load_state_dict(backup)


class IsolatedRngEvalHook(EvalHook):
    """detectron2's ``EvalHook`` whose evaluation leaves the training run's RNG states untouched, so a run with
    periodic evaluation draws the same random numbers as one without. ``final_evaluation_done``: whether the
    evaluation at the end of training has completed, ``final_evaluation_failed`` whether it raised; ``failed_at``: the
    iteration after which an evaluation during training raised (None: none did)."""

    final_evaluation_done = False
    final_evaluation_failed = False
    failed_at = None

    def after_step(self):
        try:
            super().after_step()
        except Exception:
            self.failed_at = self.trainer.iter
            raise

    def _do_eval(self):
        with isolated_rng():
            super()._do_eval()

    def after_train(self):
        # detectron2 runs after_train also when training failed; it evaluates whenever the last iteration has begun,
        # so an error in it (a final checkpoint that could not be saved) waited for a whole evaluation of the
        # unsaved model. trainer.iter reaches max_iter only when every iteration completed.
        if self.trainer.iter < self.trainer.max_iter:
            del self._func  # what detectron2's after_train does last: the closure holds the trainer
            return
        try:
            super().after_train()
        except Exception:
            self.final_evaluation_failed = True
            raise
        self.final_evaluation_done = True


class ReleaseFreedMemoryHook(HookBase):
    """Every ``period`` iterations (0: never), hands the C heap's free pages back to the operating system
    (:func:`~focus_detr.engine.memory.release_freed_memory`), so a long run's resident memory does not creep up with
    heap fragmentation. Changes no tensor and no random stream: results are the same with or without it.
    Place it after the evaluation hook, whose buffers are freed by then."""

    def __init__(self, period):
        if period < 0:
            raise ValueError(f"train.release_freed_memory_period must be >= 0, got {period}")
        self.period = period

    def after_step(self):
        if self.period and (self.trainer.iter + 1) % self.period == 0:
            release_freed_memory()


class ProgressWriter(PeriodicWriter):
    """detectron2's PeriodicWriter, except:

    - at the end of a run whose last iteration failed: its console printer showed the last completed iteration's
      losses and rate under the failed iteration's number, right after the error (``iter: 1 total_loss: 25.6 ...``
      below "training diverged at iteration 1"). The failed iteration recorded nothing, so the printer is skipped
      then; the JSON and TensorBoard writers write only what is new, and still run;
    - at the end of a run that failed or stopped, a writer that fails (the folder no longer writable: the reason the
      run failed, often) is a warning: its error took the place of the run's own, whose line names the checkpoint;
    - the TensorBoard writer, which opens its event file at its first write, does not open it in a folder that is gone
      (it created the removed output folder again) or not writable (its writing thread printed a traceback);
    - with ``output_claim`` (the run's :class:`~focus_detr.engine.output_lock.OutputDirClaim`), the TensorBoard
      writer stops writing once the folder was removed or replaced: it writes by path (its thread printed a traceback
      for a removed folder, and wrote into the new run's folder that replaced it). The next save stops the run.
    """

    def __init__(self, writers, period=20, output_claim=None):
        super().__init__(writers, period)
        self.output_claim = output_claim
        self._warned = set()  # the writers warned about by _may_write

    def after_step(self):
        if (self.trainer.iter + 1) % self._period == 0 or self.trainer.iter == self.trainer.max_iter - 1:
            for writer in self._writers:
                if self._may_write(writer):
                    writer.write()

    def after_train(self):
        storage = self.trainer.storage
        recorded_now = any(iteration == storage.iter for _, iteration in storage.latest().values())
        ended_early = self.trainer.iter < self.trainer.max_iter  # detectron2 counts max_iter once all completed
        for writer in self._writers:
            try:
                if (recorded_now or not isinstance(writer, CommonMetricPrinter)) and self._may_write(writer):
                    writer.write()
                writer.close()
            except OSError as error:
                if not ended_early:
                    raise
                logger.warning(f"The last metrics were not written ({type(writer).__name__}): {error}")

    def _may_write(self, writer):
        """False (with a warning, once) for a TensorBoard writer in a folder removed or replaced since the run claimed
        it, or whose event file is not open yet, in a folder that is gone or not writable."""
        if not isinstance(writer, TensorboardXWriter):
            return True
        folder = writer._writer_args["log_dir"]
        lost = self.output_claim.lost() if self.output_claim is not None else None
        if lost is not None:
            why = f"{folder} was removed or replaced ({lost})"
        elif "_writer" in writer.__dict__:  # detectron2's cached_property: the event file is open
            return True
        elif not os.path.isdir(folder):
            why = f"{folder} is gone"
        elif not os.access(folder, os.W_OK):
            why = f"{folder} is not writable"
        else:
            return True
        if id(writer) not in self._warned:
            self._warned.add(id(writer))
            logger.warning(f"TensorBoard's event file is not written: {why}")
        return False
