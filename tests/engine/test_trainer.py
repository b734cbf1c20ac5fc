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
