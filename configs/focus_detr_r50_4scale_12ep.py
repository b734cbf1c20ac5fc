# Focus-DETR, ResNet-50, 4 feature levels, 12 COCO epochs (16 images/iter: 90000 iterations).
from .common.coco_schedule import lr_multiplier_12ep as lr_multiplier
from .common.data.coco_detr import dataloader
from .common.optim import AdamW as optimizer
from .common.train import train
from .models.focus_detr_r50 import model

train.max_iter = 90000
# torchvision's ImageNet ResNet-50 in detectron2 format (the official r50_v1.pkl is the same conversion).
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/focus_detr_r50_4scale_12ep"
