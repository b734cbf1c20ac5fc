# Focus-DETR, Swin-T (ImageNet-1k, 224), 4 feature levels, 12 COCO epochs.
from .common.coco_schedule import lr_multiplier_12ep as lr_multiplier
from .common.data.coco_detr import dataloader
from .common.optim import AdamW as optimizer
from .common.train import train
from .models.focus_detr_swin import model

dataloader.train.dataset.filter_empty = True
train.max_iter = 90000
# Microsoft's Swin-T ImageNet-1k weights file, as released (detectron2's heuristics match its keys).
train.init_checkpoint = "./pretrained/swin_tiny_patch4_window7_224.pth?matching_heuristics=True"
train.output_dir = "./output/focus_detr_swin_tiny_224_4scale_12ep"
