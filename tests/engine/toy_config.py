"""A LazyConfig for engine tests: the toy detector on the toy dataset ``focus_detr_toy`` (registered by the test)."""
import os

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.data import transforms as T
from toy_detector import FailingOnCall, ToyDetector, register_toy_dataset  # tests/engine is on sys.path

# Processes started by train_net.py --num-gpus N load this file afresh: they register the data themselves.
if os.environ.get("FOCUS_DETR_TOY_DATA_ROOT"):
    register_toy_dataset("focus_detr_toy", os.environ["FOCUS_DETR_TOY_DATA_ROOT"])

_COMMON = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "common")
dataloader = LazyConfig.load(os.path.join(_COMMON, "data", "coco_detr.py")).dataloader
optimizer = LazyConfig.load(os.path.join(_COMMON, "optim.py")).AdamW
train = LazyConfig.load(os.path.join(_COMMON, "train.py")).train
default_multistep = LazyConfig.load(os.path.join(_COMMON, "coco_schedule.py"), "default_multistep")

model = L(ToyDetector)(num_classes=1, num_queries=4)

dataloader.train.dataset.names = "focus_detr_toy"
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.train.mapper.augmentation = [L(T.RandomFlip)(), L(T.ResizeShortestEdge)(short_edge_length=(40, 48, 56), max_size=96, sample_style="choice")]
dataloader.train.mapper.augmentation_with_crop = [
    L(T.RandomFlip)(),
    L(T.RandomCrop)(crop_type="absolute_range", crop_size=(32, 48)),
    L(T.ResizeShortestEdge)(short_edge_length=(40, 48), max_size=96, sample_style="choice"),
]
# "RANK:CALL": the training mapper of process RANK fails on its CALL-th image as an unreadable file would, or (a
# worker's mapper) is killed there as by the out-of-memory killer
for _variable, _how in (("FOCUS_DETR_TOY_UNREADABLE", "unreadable"), ("FOCUS_DETR_TOY_WORKER_KILLED", "killed")):
    if os.environ.get(_variable):
        _rank, _call = (int(value) for value in os.environ[_variable].split(":"))
        dataloader.train.mapper = L(FailingOnCall)(mapper=dataloader.train.mapper, rank=_rank, call=_call, how=_how)
# "RANK:STEP": the box loss of process RANK's training forward number STEP is NaN, or that forward runs out of memory
if os.environ.get("FOCUS_DETR_TOY_NAN"):
    model.nan_rank, model.nan_step = (int(value) for value in os.environ["FOCUS_DETR_TOY_NAN"].split(":"))
if os.environ.get("FOCUS_DETR_TOY_OOM"):
    model.oom_rank, model.oom_step = (int(value) for value in os.environ["FOCUS_DETR_TOY_OOM"].split(":"))
dataloader.test.dataset.names = "focus_detr_toy"
dataloader.test.mapper.augmentation = [L(T.ResizeShortestEdge)(short_edge_length=48, max_size=96)]
dataloader.test.num_workers = 0
# "RANK:CALL": in every evaluation, the test mapper of process RANK refuses its CALL-th image (a size that is not its
# dataset record's)
if os.environ.get("FOCUS_DETR_TOY_TEST_REFUSED"):
    _rank, _call = (int(value) for value in os.environ["FOCUS_DETR_TOY_TEST_REFUSED"].split(":"))
    dataloader.test.mapper = L(FailingOnCall)(mapper=dataloader.test.mapper, rank=_rank, call=_call, how="refused")

optimizer.lr = 1e-3
lr_multiplier = default_multistep(epochs=10, decay_epochs=8, iters_per_epoch=1)
train.max_iter = 10
train.checkpointer.period = 5
train.eval_period = 0
train.log_period = 1
train.device = "cpu"
train.seed = 7
