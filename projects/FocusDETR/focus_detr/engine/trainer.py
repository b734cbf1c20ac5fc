"""The training step: forward, backward, optional gradient clipping, optimiser step, with AMP on CPU or GPU."""
import time

import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .cli import is_user_error, one_line
from .precision import amp_autocast

__all__ = ["DataLoadingFailed", "DetrTrainer"]


class DataLoadingFailed(ValueError):
    """A process of a multi-process run could not load its training batch (a user error: an unreadable image, ...).
    Every process raises it at the same iteration with the same message, so that they can save together."""


class DetrTrainer(SimpleTrainer):
    """detectron2's ``SimpleTrainer`` step plus what DETR training needs and ``AMPTrainer`` lacks on CPU:
    autocast on any device type, a gradient scaler only for float16, and gradient-norm clipping of the unscaled
    gradients before the step (the total norm before clipping is logged as ``grad_norm``).

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
            raise ValueError(f"clip_grad max_norm must be positive, got {clip_grad_max_norm}")
        self.clip_grad_max_norm = clip_grad_max_norm
        self.clip_grad_norm_type = clip_grad_norm_type
        self.amp_dtype = amp_dtype
        self.device_type = device_type
        self.grad_scaler = torch.amp.GradScaler(device_type, enabled=amp_dtype == torch.float16)
        self.data_failed_at = None  # the iteration whose batch could not be loaded

    def run_step(self):
        assert self.model.training, "[DetrTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = self._next_batch()
        data_time = time.perf_counter() - start

        with amp_autocast(self.device_type, self.amp_dtype):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss.float() for loss in loss_dict.values())

        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        if self.clip_grad_max_norm is not None:
            self.grad_scaler.unscale_(self.optimizer)
            parameters = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            total_norm = torch.nn.utils.clip_grad_norm_(parameters, self.clip_grad_max_norm, self.clip_grad_norm_type)
            get_event_storage().put_scalar("grad_norm", float(total_norm), smoothing_hint=True)
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def _next_batch(self):
        """The next training batch. When it cannot be loaded, nothing of this iteration has run and the state is
        still that after the previous one, which a save keeps (``data_failed_at``).

        With several processes, they first agree whether each got its batch (an all-reduce): a process that raised
        alone would leave the others waiting in the forward's collectives for good. When one failed with a user
        error, every process raises :class:`DataLoadingFailed` here, with the data loader's position put back to
        before this batch (a resume loads it again); when one failed otherwise (a bug), that one raises its error
        and the others a RuntimeError naming it."""
        loader = self.data_loader
        several = comm.get_world_size() > 1
        position = loader.state_dict() if several and hasattr(loader, "state_dict") else None
        try:
            batch, failure = next(self._data_loader_iter), None
        except Exception as error:
            if not several:
                self.data_failed_at = self.iter
                raise
            batch, failure = None, error
        if not several:
            return batch
        # one small all-reduce per step (~0.3 ms between two CPU processes here, a third of an all-gather); the
        # messages are gathered only when a process failed
        any_failed = torch.tensor([failure is not None], dtype=torch.int32)
        dist.all_reduce(any_failed, op=dist.ReduceOp.MAX, group=comm._get_global_gloo_group())
        if not any_failed.item():
            return batch
        reports = comm.all_gather(None if failure is None else (one_line(failure), is_user_error(failure)))
        failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
        self.data_failed_at = self.iter
        if failure is None and position is not None:
            loader.load_state_dict(position)  # what a save records: this batch is still to come
        rank, (text, _) = failed[0]
        if all(report[1] for _, report in failed):
            raise DataLoadingFailed(f"{text} (process {rank} of {len(reports)})") from failure
        if failure is not None:
            raise failure
        raise RuntimeError(f"process {rank} of {len(reports)} failed to load its training batch: {text}")

    def state_dict(self):
        state = super().state_dict()
        if self.grad_scaler.is_enabled():
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict and self.grad_scaler.is_enabled():
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
