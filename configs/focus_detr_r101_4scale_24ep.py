# Focus-DETR, ResNet-101, 4 feature levels, 24 COCO epochs. (The official R101 36 ep config trained an R50 by
# mistake; this one is a real R101.)
from .focus_detr_r50_4scale_24ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.stages.depth = 101
# torchvision's ImageNet ResNet-101 (IMAGENET1K_V1, what the official r101_v1.pkl converts; detectron2's model zoo
# has no torchvision R-101). Read as it is: the checkpointer converts torchvision's keys.
train.init_checkpoint = "https://download.pytorch.org/models/resnet101-63fe2227.pth"
train.output_dir = "./output/focus_detr_r101_4scale_24ep"
