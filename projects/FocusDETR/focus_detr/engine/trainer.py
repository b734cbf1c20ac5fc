"""The training step: forward, backward, optional gradient clipping, optimiser step, with AMP on CPU or GPU."""
import time

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import get_event_storage

from .precision import amp_autocast

__all__ = ["DetrTrainer"]


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
        try:
            data = next(self._data_loader_iter)
        except Exception:
            # nothing of this iteration ran: the state is still that after the previous one (what a save keeps)
            self.data_failed_at = self.iter
            raise
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

    def state_dict(self):
        state = super().state_dict()
        if self.grad_scaler.is_enabled():
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict and self.grad_scaler.is_enabled():
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
