# Focus-DETR, Swin-L (ImageNet-22k, 384), 36 COCO epochs.
from detectron2.layers import ShapeSpec

from .focus_detr_swin_base_384_22k_4scale_36ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.embed_dim = 192
model.backbone.num_heads = (6, 12, 24, 48)
model.neck.input_shapes = {"p1": ShapeSpec(channels=384), "p2": ShapeSpec(channels=768), "p3": ShapeSpec(channels=1536)}
train.init_checkpoint = "./pretrained/swin_large_patch4_window12_384_22k.pth?matching_heuristics=True"
train.output_dir = "./output/focus_detr_swin_large_384_22k_4scale_36ep"
