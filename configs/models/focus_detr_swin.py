# Focus-DETR with detectron2's Swin Transformer backbone (Swin-T, 224 pre-training); other sizes override the fields.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import SwinTransformer

from .focus_detr_r50 import model

model.backbone = L(SwinTransformer)(
    pretrain_img_size=224,
    embed_dim=96,
    depths=(2, 2, 6, 2),
    num_heads=(3, 6, 12, 24),
    drop_path_rate=0.1,
    window_size=7,
    out_indices=(1, 2, 3),
)
model.backbone_channels_last = False  # a transformer backbone: its reshapes expect contiguous NCHW patches
model.neck.input_shapes = {"p1": ShapeSpec(channels=192), "p2": ShapeSpec(channels=384), "p3": ShapeSpec(channels=768)}
model.neck.in_features = ["p1", "p2", "p3"]
