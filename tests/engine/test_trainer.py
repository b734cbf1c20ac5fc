"""DetrTrainer's step on its own: a loss that is not finite stops it before the optimiser step, with remedies this
run can take."""
import itertools
import os
import re

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

from engine_test_utils import REPO_ROOT
from focus_detr.engine.config import check_override_keys
from focus_detr.engine.config_files import load_config
from focus_detr.engine.evaluation import EVALUATION_OUT_OF_MEMORY_REMEDY
from focus_detr.engine.trainer import DetrTrainer, StepOutOfMemory, TrainingDiverged


class _Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, batch):
        loss = (self.linear(batch) ** 2).mean()
        return {"loss_a": loss, "loss_b": loss * batch.sum().log()}  # NaN for a batch with a negative sum


def _trainer(**kwargs):
    model = _Regressor()
    batches = itertools.cycle([torch.ones(4, 2), -torch.ones(4, 2)])
    trainer = DetrTrainer(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)
    trainer.iter = 0
    return trainer


@pytest.mark.parametrize(
    "kwargs, remedies",
    [
        ({}, "lower optimizer.lr or clip gradients (train.clip_grad.enabled=True)"),
        ({"clip_grad_max_norm": 0.5}, "lower optimizer.lr or clip gradients harder (train.clip_grad.params.max_norm, now 0.5)"),
        ({"amp_dtype": torch.bfloat16}, "lower optimizer.lr, clip gradients (train.clip_grad.enabled=True) or train in "
                                        "float32 (train.amp.enabled=False)"),
    ],
)
def test_a_non_finite_loss_stops_the_step_before_the_optimiser_and_names_the_remedies(kwargs, remedies):
    trainer = _trainer(**kwargs)
    with EventStorage() as storage:
        trainer.run_step()  # a finite step: applied and logged
        storage.step()
        trainer.iter = 1
        weights = {name: value.clone() for name, value in trainer.model.state_dict().items()}
        with pytest.raises(TrainingDiverged) as raised:
            trainer.run_step()
    assert str(raised.value) == f"training diverged at iteration 1: loss_b is nan, so its step was not applied; {remedies}"
    assert all(torch.equal(weights[name], value) for name, value in trainer.model.state_dict().items())
    assert "total_loss" in storage.histories() and "loss_b" in storage.histories()


class _NanGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class _FiniteLossNanGradient(nn.Module):
    def __init__(self):
        super().__init__()
        self.broken, self.fine = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))

    def forward(self, batch):
        return {"loss": _NanGradient.apply(self.broken).sum() + (self.fine ** 2).sum()}


def _nan_gradient_trainer(amp_dtype, clip_grad_max_norm=0.1):
    model = _FiniteLossNanGradient()
    trainer = DetrTrainer(model, itertools.repeat(None), torch.optim.AdamW(model.parameters(), lr=0.1),
                          clip_grad_max_norm=clip_grad_max_norm, amp_dtype=amp_dtype)
    trainer.iter = 0
    return trainer


@pytest.mark.parametrize("amp_dtype, clip, remedies", [
    (None, 0.1, "lower optimizer.lr"), (torch.bfloat16, 0.1, "lower optimizer.lr or train in float32"),
    (None, None, "lower optimizer.lr")])
def test_gradients_that_are_not_finite_stop_the_step_though_the_losses_are(amp_dtype, clip, remedies):
    # clipped, they turned every weight NaN, the finite ones too; unclipped, AdamW did; and the step went on, the
    # next one's NaN loss stopping training after the NaN weights were saved for the resume
    trainer = _nan_gradient_trainer(amp_dtype, clip)
    weights = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    with EventStorage(), pytest.raises(TrainingDiverged) as raised:
        trainer.run_step()
    assert str(raised.value).startswith("training diverged at iteration 0: the gradient norm is nan while the losses "
                                        f"are finite, so its step was not applied; {remedies}")
    assert all(torch.equal(weights[name], value) for name, value in trainer.model.state_dict().items())


@pytest.mark.parametrize("clip", [0.1, None])
def test_float16_steps_the_grad_scaler_skips_again_and_again_stop_training(clip):
    # the scaler skips a step whose float16 gradients overflow and halves its scale (how it finds its scale); with
    # gradients that always overflow it skipped every step, without a word
    from focus_detr.engine.trainer import MAX_OVERFLOWED_STEPS

    trainer = _nan_gradient_trainer(torch.float16, clip)
    with EventStorage() as storage:
        for iteration in range(MAX_OVERFLOWED_STEPS - 1):
            trainer.iter = storage.iter = iteration
            trainer.run_step()
        assert "grad_norm" not in storage.histories()  # no Infinity in metrics.json
        trainer.iter = MAX_OVERFLOWED_STEPS - 1
        with pytest.raises(TrainingDiverged, match=rf"the float16 gradients overflowed in {MAX_OVERFLOWED_STEPS} steps "
                                                   r"in a row, which the grad scaler skipped \(its scale is now "
                                                   r".*\); train in bfloat16"):
            trainer.run_step()


@pytest.mark.parametrize("saved, resumed, scaler_note", [
    (torch.float16, None, True), (torch.bfloat16, None, False), (None, torch.float16, True),
    (torch.bfloat16, torch.bfloat16, None)])
def test_a_resume_in_another_precision_says_so(saved, resumed, scaler_note, caplog):
    # a float16 run resumed without train.amp trained on in float32 and dropped its grad scaler without a word
    state = _trainer(amp_dtype=saved).state_dict()
    with caplog.at_level("WARNING", logger="focus_detr.engine.trainer"):
        _trainer(amp_dtype=resumed).load_state_dict(state)
    warned = [r.getMessage() for r in caplog.records if "The checkpoint was trained in" in r.getMessage()]
    if scaler_note is None:
        assert warned == []
    else:
        names = {None: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
        assert len(warned) == 1 and warned[0].startswith(
            f"The checkpoint was trained in {names[saved]} and this run trains in {names[resumed]} (train.amp)")
        assert ("grad scaler starts afresh" in warned[0]) == scaler_note


def test_rewinding_puts_back_the_random_state_the_step_began_with():
    trainer = _trainer()
    with EventStorage():
        trainer.run_step()
        trainer.iter = 1
        began_with = torch.get_rng_state()
        with pytest.raises(TrainingDiverged):
            trainer.run_step()
    torch.rand(3)  # draws after the failed step
    assert not torch.equal(torch.get_rng_state(), began_with)
    trainer.rewind_to_step_start()
    assert torch.equal(torch.get_rng_state(), began_with)


@pytest.mark.parametrize("config", ["focus_detr_r50_4scale_12ep.py", "focus_detr_r18_trees.py"])
def test_the_settings_an_out_of_memory_error_names_exist(config):
    # it named model.num_queries / model.dn_number, which a user following it got "unknown config key" for
    cfg = load_config(os.path.join(REPO_ROOT, "configs", config), [])
    remedies = f"{StepOutOfMemory.remedy} {EVALUATION_OUT_OF_MEMORY_REMEDY}"
    named = re.findall(r"\b(?:model|dataloader|train)\.[\w.]*\w", remedies)
    assert "model.transformer.num_queries" in named
    check_override_keys(cfg, [f"{key}=0" for key in named])
