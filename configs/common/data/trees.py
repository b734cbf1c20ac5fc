"""The embedded tree-crown data (``trees_train``: 38 tiles of ~400 px, ``trees_val``: 9 tiles; one class, "tree"),
DETR-style augmentation at a CPU-friendly scale.

Loading this config registers the datasets (``focus_detr.data.register_trees``); a missing cache is reported with
the command that builds it (``python tools/prepare_trees.py``). Aerial images have no "up", so vertical flips are
added to the DETR recipe.
"""
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from focus_detr.data import get_checked_dataset_dicts, register_trees
from focus_detr.data.dataset_mapper import DetrDatasetMapper
from focus_detr.engine.train_loader import build_resumable_train_loader

register_trees()

TRAIN_SHORT_EDGES = (288, 320, 352, 384)
TEST_SHORT_EDGE = 352
MAX_SIZE = 512

dataloader = OmegaConf.create()

dataloader.train = L(build_resumable_train_loader)(
    dataset=L(get_checked_dataset_dicts)(names="trees_train", filter_empty=True),
    mapper=L(DetrDatasetMapper)(
        augmentation=[
            L(T.RandomFlip)(horizontal=True, vertical=False),
            L(T.RandomFlip)(horizontal=False, vertical=True),
            L(T.ResizeShortestEdge)(short_edge_length=TRAIN_SHORT_EDGES, max_size=MAX_SIZE, sample_style="choice"),
        ],
        augmentation_with_crop=[
            L(T.RandomFlip)(horizontal=True, vertical=False),
            L(T.RandomFlip)(horizontal=False, vertical=True),
            L(T.RandomCrop)(crop_type="absolute_range", crop_size=(256, 384)),
            L(T.ResizeShortestEdge)(short_edge_length=TRAIN_SHORT_EDGES, max_size=MAX_SIZE, sample_style="choice"),
        ],
        is_train=True,
        img_format="RGB",
        crop_probability=0.5,
    ),
    total_batch_size=2,
    num_workers=2,
    seed=None,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_checked_dataset_dicts)(names="trees_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        augmentation=[L(T.ResizeShortestEdge)(short_edge_length=TEST_SHORT_EDGE, max_size=MAX_SIZE)],
        augmentation_with_crop=None,
        is_train=False,
        img_format="RGB",
    ),
    num_workers=0,
)

dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}", output_dir="${...train.output_dir}")
