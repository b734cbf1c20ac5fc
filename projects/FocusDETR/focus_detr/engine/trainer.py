"""The training step: forward, backward, optional gradient clipping, optimiser step, with AMP on CPU or GPU."""
import logging
import math
import time

import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .agreement import ProcessFailed, failure_report, raise_agreed_failure
from .cli import is_out_of_memory, one_line
from .interrupt import stop_signals_deferred
from .precision import amp_autocast
from .rng import capture_rng_state, restore_rng_state

__all__ = ["DataLoadingFailed", "DetrTrainer", "ProcessOutOfMemory", "StepOutOfMemory", "TrainingDiverged"]

logger = logging.getLogger(__name__)


class DataLoadingFailed(ProcessFailed):
    """A process of a multi-process run could not load its training batch (a user error: an unreadable image, ...).
    Every process raises it at the same iteration with the same message, so that they can save together; ``remedy``
    is that of the failing process's error (None: the default)."""


# float16 steps in a row whose gradients may overflow before training is said to have diverged: the grad scaler
# halves its scale after each, from 65536 to 0.004 by the last
MAX_OVERFLOWED_STEPS = 25


class TrainingDiverged(ValueError, FloatingPointError):
    """A loss became infinite or NaN; the step that computed it was not applied. A user error (the learning rate,
    clipping or precision need changing: the message names the remedies this run can take), raised by every process
    at the same iteration with the same message."""

    remedy = "change what it names"


class StepOutOfMemory(ValueError):
    """The device ran out of memory in a training step's forward or backward, so the step was not applied: a user
    error (the batch, the image size or the precision need changing). ``remedy`` says what to change."""

    remedy = ("lower dataloader.train.total_batch_size or the training image size (or "
              "model.transformer.num_queries / model.denoising.dn_number where raised), or train with "
              "train.amp.enabled=True")


class ProcessOutOfMemory(ProcessFailed, StepOutOfMemory):
    """:class:`StepOutOfMemory` in the forward of one process of several: every process raises it at the same
    iteration with the same message, so that they can save together."""


class DetrTrainer(SimpleTrainer):
    """detectron2's ``SimpleTrainer`` step plus what DETR training needs and ``AMPTrainer`` lacks on CPU:
    autocast on any device type, a gradient scaler only for float16, and gradient-norm clipping of the unscaled
    gradients before the step (the total norm before clipping is logged as ``grad_norm``). A step whose loss is not
    finite (:class:`TrainingDiverged`) or that runs out of memory (:class:`StepOutOfMemory`) raises before the
    optimiser step; :meth:`rewind_to_step_start` then gives back the RNG state and data position it began with.

    Args:
        model, data_loader, optimizer: as in ``SimpleTrainer`` (the model returns a dict of weighted losses).
        clip_grad_max_norm (float or None): clip the total gradient norm to this value; None = no clipping.
        clip_grad_norm_type (float): the norm's order (2 = L2).
        amp_dtype (torch.dtype or None): autocast dtype; None = full precision.
        device_type (str): "cpu" or "cuda" (autocast and scaler device).
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        clip_grad_max_norm=None,
        clip_grad_norm_type=2.0,
        amp_dtype=None,
        device_type="cpu",
    ):
        super().__init__(model, data_loader, optimizer)
        if clip_grad_max_norm is not None and clip_grad_max_norm <= 0:
            raise ValueError(f"train.clip_grad.params.max_norm must be positive (train.clip_grad.enabled=False: no "
                             f"clipping), got {clip_grad_max_norm}")
        if not clip_grad_norm_type > 0:  # also NaN: a negative type made the norm 0 (no clipping), 0 counted entries
            raise ValueError(f"train.clip_grad.params.norm_type must be positive (2.0: the Euclidean norm; inf: the "
                             f"largest entry), got {clip_grad_norm_type}")
        self.clip_grad_max_norm = clip_grad_max_norm
        self.clip_grad_norm_type = clip_grad_norm_type
        self.amp_dtype = amp_dtype
        self.device_type = device_type
        self.grad_scaler = torch.amp.GradScaler(device_type, enabled=amp_dtype == torch.float16)
        self._overflowed_steps = 0  # float16 steps in a row whose gradients overflowed (the scaler skipped them)
        self.data_failed_at = None  # the iteration whose batch could not be loaded (one process)
        self._step_start = None  # (RNG state, data-loader position) when the current iteration began

    def run_step(self):
        assert self.model.training, "[DetrTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        loader = self.data_loader
        self._step_start = (capture_rng_state(), loader.state_dict() if hasattr(loader, "state_dict") else None)
        several = comm.get_world_size() > 1
        batch, failure = self._next_batch(several)
        if several:  # before the forward, whose DDP wrapper may broadcast buffers (a collective)
            self._agree(failure, DataLoadingFailed, "to load its training batch")
        data_time = time.perf_counter() - start
        loss_dict, failure = self._forward(batch)
        if several:  # before the backward's all-reduce
            self._agree(failure, ProcessOutOfMemory, "in its forward")
        elif failure is not None:
            raise failure
        total_norm = self._backward(loss_dict)
        self._write_metrics(loss_dict, data_time, grad_norm=total_norm)  # raises TrainingDiverged before the step
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def _forward(self, batch):
        """``(loss dict, None)``; or ``(None, StepOutOfMemory)`` when the forward ran out of memory."""
        with amp_autocast(self.device_type, self.amp_dtype):
            loss_dict, failure = self._unless_out_of_memory(self.model, batch)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        return loss_dict, failure

    def _backward(self, loss_dict):
        """The gradients of the losses (unscaled, and clipped when clipping is on); returns their total norm (before
        clipping), which tells a step whose gradients are not finite. Raises :class:`StepOutOfMemory` when the
        backward runs out of memory (with several processes, each alone: the others wait in the backward's
        all-reduce)."""
        losses = sum(loss.float() for loss in loss_dict.values())
        self.optimizer.zero_grad()
        _, failure = self._unless_out_of_memory(self.grad_scaler.scale(losses).backward)
        if failure is not None:
            raise failure
        self.after_backward()
        self.grad_scaler.unscale_(self.optimizer)
        parameters = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.clip_grad_max_norm is None:
            return torch.nn.utils.get_total_norm([p.grad for p in parameters], self.clip_grad_norm_type)
        return torch.nn.utils.clip_grad_norm_(parameters, self.clip_grad_max_norm, self.clip_grad_norm_type)

    def _unless_out_of_memory(self, function, *args):
        """``(function(*args), None)``; or, when it runs out of memory, ``(None, StepOutOfMemory)`` for this
        iteration, with the gradients freed (other errors are raised)."""
        out_of_memory = None
        try:
            return function(*args), None
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            out_of_memory = one_line(error).split(". ")[0]
        # outside the handler: the failed call's tensors, which the error's traceback holds, are freed by now
        self.optimizer.zero_grad(set_to_none=True)
        return None, StepOutOfMemory(f"out of memory in iteration {self.iter} ({out_of_memory}), so its step was not "
                                     "applied")

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None, grad_norm=None):
        """detectron2's metrics (each loss averaged over the processes, ``total_loss``, ``data_time`` of the slowest
        process, ``rank_data_time``) plus ``grad_norm`` (the total norm before clipping), read from the device in one
        transfer where detectron2 reads each loss on its own. Every process sees every process's losses (an
        all-gather where detectron2 gathers to the main one) and raises :class:`TrainingDiverged` when one is not
        finite: all of them at the same iteration, before the optimiser step."""
        iter = self.iter if iter is None else iter
        names = list(loss_dict)
        values = [loss.detach().float().reshape(()) for loss in loss_dict.values()]
        if grad_norm is not None:
            values.append(grad_norm.detach().float().reshape(()))
        read = torch.stack(values).tolist()
        losses, grad_norm = dict(zip(names, read)), read[len(names)] if grad_norm is not None else None
        reports = ([(losses, data_time, grad_norm)] if comm.get_world_size() == 1
                   else comm.all_gather((losses, data_time, grad_norm)))
        bad = [(rank, name, value) for rank, (rank_losses, _, _) in enumerate(reports)
               for name, value in rank_losses.items() if not math.isfinite(value)]
        if bad:  # nothing of this iteration is logged: a resume repeats it
            raise TrainingDiverged(self._divergence_message(iter, bad, len(reports)))
        if grad_norm is not None:  # every process decides on the same norms (all-reduced gradients: equal ones)
            self._check_gradient_norm(iter, max(norm for _, _, norm in reports if norm is not None))
        storage = get_event_storage()
        storage.put_scalar("rank_data_time", data_time, cur_iter=iter)
        if not comm.is_main_process():
            return
        means = {name: sum(rank_losses[name] for rank_losses, _, _ in reports) / len(reports) for name in names}
        storage.put_scalar("data_time", max(rank_data_time for _, rank_data_time, _ in reports), cur_iter=iter)
        storage.put_scalar(f"{prefix}total_loss", sum(means.values()), cur_iter=iter)
        if len(means) > 1:
            storage.put_scalars(cur_iter=iter, **{f"{prefix}{name}": value for name, value in means.items()})
        if grad_norm is not None and math.isfinite(grad_norm):  # a step float16's scaler skips has no norm
            storage.put_scalar("grad_norm", grad_norm, smoothing_hint=True, cur_iter=iter)

    def _check_gradient_norm(self, iteration, grad_norm):
        """Raises :class:`TrainingDiverged` for gradients that are not finite while the losses are: in float32 and
        bfloat16 their clipping made every weight NaN, and the step went on; in float16 the grad scaler skips such a
        step and halves its scale, which is how it finds its scale at the start, but after
        ``MAX_OVERFLOWED_STEPS`` in a row it skipped every step without a word."""
        if math.isfinite(grad_norm):
            self._overflowed_steps = 0
            return
        if not self.grad_scaler.is_enabled():
            raise TrainingDiverged(self._divergence_message(
                iteration, [(comm.get_rank(), "the gradient norm", grad_norm)], 1, "while the losses are finite",
                clipping_helps=False))
        self._overflowed_steps += 1
        if self._overflowed_steps >= MAX_OVERFLOWED_STEPS:
            raise TrainingDiverged(
                f"training diverged at iteration {iteration}: the float16 gradients overflowed in "
                f"{self._overflowed_steps} steps in a row, which the grad scaler skipped (its scale is now "
                f"{self.grad_scaler.get_scale():g}); train in bfloat16 (train.amp.precision=bfloat16, where the "
                "device has it) or in float32 (train.amp.enabled=False)")

    def _divergence_message(self, iteration, bad, world_size, context="", clipping_helps=True):
        """``bad``: (rank, loss name, value) of every non-finite loss; ``context`` follows them. The remedies are
        those this run can take (clipping: not for gradients that are not finite)."""
        names = []
        for _, name, value in bad:
            if f"{name} is {value}" not in names:
                names.append(f"{name} is {value}")
        ranks = sorted({rank for rank, _, _ in bad})
        where = ""
        if world_size > 1:
            where = f" (process{'es' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of {world_size})"
        remedies = ["lower optimizer.lr"]
        if clipping_helps and self.clip_grad_max_norm is None:
            remedies.append("clip gradients (train.clip_grad.enabled=True)")
        elif clipping_helps:
            remedies.append(f"clip gradients harder (train.clip_grad.params.max_norm, now {self.clip_grad_max_norm})")
        if self.amp_dtype is not None:
            remedies.append("train in float32 (train.amp.enabled=False)")
        return (
            f"training diverged at iteration {iteration}: {', '.join(names)}{where}{context and ' ' + context}, so "
            "its step was not applied; "
            + (f"{', '.join(remedies[:-1])} or {remedies[-1]}" if len(remedies) > 1 else remedies[0])
        )

    def after_train(self):
        super().after_train()
        # The data-loading workers stop now, as torch stops them when their iterator goes. Left to the interpreter's
        # exit, they are terminated instead, which skips their clean-up: a pymp-* folder each stayed in $TMPDIR.
        # (The loader's position, which a save after a failure records, is the loader's own, not the iterator's.)
        # A stop signal meanwhile (a second Ctrl-C after a stop) takes effect once they have: raised in torch's
        # iterator destructor, it was printed as an "Exception ignored" traceback after the stop line and cut their
        # stop short.
        with stop_signals_deferred("the data-loading workers stop", "they have stopped"):
            self._data_loader_iter_obj = None

    def rewind_to_step_start(self):
        """Puts the RNG state and the data loader's position back to where the current iteration began: what a
        checkpoint after the previous iteration holds, so that a save now lets a resume repeat this iteration."""
        if self._step_start is None:
            return
        rng_state, position = self._step_start
        restore_rng_state(rng_state)
        if position is not None:
            self.data_loader.load_state_dict(position)

    def _next_batch(self, several):
        """``(the next training batch, None)``. When it cannot be loaded, nothing of this iteration has run: after
        :meth:`rewind_to_step_start` (the data position before this batch) a save keeps the state after the previous
        one. In one process the error is raised here (``data_failed_at``); with several, ``(None, the error)``, for
        the processes to agree on (:meth:`_agree`)."""
        try:
            return next(self._data_loader_iter), None
        except Exception as error:
            if several:
                return None, error
            self.data_failed_at = self.iter
            raise

    def _agree(self, failure, agreed_type, what):
        """With several processes: did every process get past this point (``failure``: this process's error, None:
        it did)? A process that raised alone would leave the others waiting in their next collective for good. When
        one failed with a user error, every process raises ``agreed_type`` here, with the same message, and they can
        save together; when one failed otherwise (a bug), that one raises its error and the others a RuntimeError
        naming it (``what`` completes "process 1 of 2 failed ...")."""
        # one small all-reduce (~0.3 ms between two CPU processes here, a third of an all-gather); the messages are
        # gathered only when a process failed
        any_failed = torch.tensor([failure is not None], dtype=torch.int32)
        dist.all_reduce(any_failed, op=dist.ReduceOp.MAX, group=comm._get_global_gloo_group())
        if any_failed.item():
            raise_agreed_failure(failure, comm.all_gather(failure_report(failure, agreed_type)), what)

    @property
    def precision(self) -> str:
        """What the steps compute in: "float32", or the autocast dtype ("bfloat16", "float16")."""
        return "float32" if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", "")

    def state_dict(self):
        state = super().state_dict()
        state["precision"] = self.precision
        if self.grad_scaler.is_enabled():
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # a checkpoint from before the record: a grad scaler's state tells float16 only
        saved = state_dict.get("precision", "float16" if "grad_scaler" in state_dict else None)
        if saved is not None and saved != self.precision:
            logger.warning(f"The checkpoint was trained in {saved} and this run trains in {self.precision} "
                           "(train.amp): resuming the weights, optimizer and schedule in the new precision" +
                           ("; the float16 grad scaler starts afresh" if "float16" in (saved, self.precision) else ""))
        if "grad_scaler" in state_dict and self.grad_scaler.is_enabled():
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
