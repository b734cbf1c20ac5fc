"""COCO 2017 with the DETR recipe: multi-scale resize (short edge 480..800, long edge <= 1333) or, with probability
0.5, resize -> random crop (384..600) -> multi-scale resize; horizontal flip; RGB; 16 images per iteration.

COCO is found through ``$DETECTRON2_DATASETS`` (``coco/{train2017,val2017,annotations}``), as in detectron2.
The training loader's position is saved in checkpoints, so ``--resume`` continues the same data order.
"""
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from focus_detr.data import get_checked_dataset_dicts
from focus_detr.data.dataset_mapper import DetrDatasetMapper
from focus_detr.engine.train_loader import build_resumable_train_loader

TRAIN_SHORT_EDGES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)

dataloader = OmegaConf.create()

dataloader.train = L(build_resumable_train_loader)(
    dataset=L(get_checked_dataset_dicts)(names="coco_2017_train", filter_empty=True),
    mapper=L(DetrDatasetMapper)(
        augmentation=[
            L(T.RandomFlip)(),
            L(T.ResizeShortestEdge)(short_edge_length=TRAIN_SHORT_EDGES, max_size=1333, sample_style="choice"),
        ],
        augmentation_with_crop=[
            L(T.RandomFlip)(),
            L(T.ResizeShortestEdge)(short_edge_length=(400, 500, 600), sample_style="choice"),
            L(T.RandomCrop)(crop_type="absolute_range", crop_size=(384, 600)),
            L(T.ResizeShortestEdge)(short_edge_length=TRAIN_SHORT_EDGES, max_size=1333, sample_style="choice"),
        ],
        is_train=True,
        img_format="RGB",
        crop_probability=0.5,
    ),
    total_batch_size=16,
    num_workers=4,
    # None: a seed drawn at start (shared by all processes) and saved in checkpoints
    seed=None,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_checked_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        augmentation=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        augmentation_with_crop=None,
        is_train=False,
        img_format="RGB",
    ),
    num_workers=4,
)

dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}", output_dir="${...train.output_dir}")
