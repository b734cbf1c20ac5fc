"""AdamW with the backbone learning rate x0.1 and no weight decay on normalisation layers (official recipe).

Use: ``optimizer = get_config("common/optim.py").AdamW`` or ``from ..common.optim import AdamW as optimizer``;
``train_net.py`` fills ``optimizer.params.model`` with the built model.
"""
import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

from focus_detr.engine.optim import LrFactorByName

AdamW = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(
        # model is filled in by train_net.py
        base_lr="${..lr}",
        weight_decay_norm=0.0,
        lr_factor_func=L(LrFactorByName)(substring="backbone", factor=0.1),
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
    # one kernel over all parameters (CPU and CUDA): ~3x faster than the per-parameter loop, same update up to
    # float rounding
    fused=True,
)
