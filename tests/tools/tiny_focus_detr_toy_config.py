"""The parity fixture's tiny Focus-DETR with one class, trained / evaluated on the toy dataset (tests only)."""
import os

from detectron2.config import LazyConfig

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TOY = LazyConfig.load(os.path.join(_REPO, "tests", "engine", "toy_config.py"))

model = LazyConfig.load(os.path.join(_REPO, "configs", "testing", "focus_detr_tiny_fixture.py")).model
model.num_classes = 1
dataloader = _TOY.dataloader
optimizer = _TOY.optimizer
lr_multiplier = _TOY.lr_multiplier
train = _TOY.train
