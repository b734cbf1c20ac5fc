# Focus-DETR, ResNet-101, 4 feature levels, 24 COCO epochs. (The official R101 36 ep config trained an R50 by
# mistake; this one is a real R101.)
from .focus_detr_r50_4scale_24ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-101.pkl"
train.output_dir = "./output/focus_detr_r101_4scale_24ep"
