# Focus-DETR, Swin-B (ImageNet-22k, 384), 36 COCO epochs. (The official "swin_base_224" config actually built this
# 384 model on a 12-epoch schedule stretched to 270k iterations; this is the 36-epoch recipe it was reported with.)
from detectron2.layers import ShapeSpec

from .focus_detr_swin_tiny_224_4scale_36ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.pretrain_img_size = 384
model.backbone.embed_dim = 128
model.backbone.depths = (2, 2, 18, 2)
model.backbone.num_heads = (4, 8, 16, 32)
model.backbone.window_size = 12
model.backbone.drop_path_rate = 0.2  # detectron2 SwinTransformer's default, which the official config left in place
model.neck.input_shapes = {"p1": ShapeSpec(channels=256), "p2": ShapeSpec(channels=512), "p3": ShapeSpec(channels=1024)}
train.init_checkpoint = "./pretrained/swin_base_patch4_window12_384_22k.pth?matching_heuristics=True"
train.output_dir = "./output/focus_detr_swin_base_384_22k_4scale_36ep"
