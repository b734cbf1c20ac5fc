# Focus-DETR, Swin-T pre-trained on ImageNet-22k, 36 COCO epochs.
from .focus_detr_swin_tiny_224_4scale_36ep import dataloader, lr_multiplier, model, optimizer, train

# the official one: Microsoft's ImageNet-22k Swin-T fine-tuned on ImageNet-1k (not the raw 22k file, ..._22k.pth)
train.init_checkpoint = "./pretrained/swin_tiny_patch4_window7_224_22kto1k_finetune.pth?matching_heuristics=True"
train.output_dir = "./output/focus_detr_swin_tiny_224_22k_4scale_36ep"
