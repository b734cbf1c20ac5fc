# A small Focus-DETR that trains from scratch on a CPU in minutes: a half-width ResNet-18 with GroupNorm (no
# ImageNet weights are available offline), a 128-wide transformer with 3 encoder and 3 decoder layers, and fewer
# queries.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock
from torch import nn

from .focus_detr_r50 import model


def _stage(in_channels, out_channels, first_stride):
    return L(ResNet.make_stage)(
        block_class=BasicBlock,
        num_blocks=2,
        in_channels=in_channels,
        out_channels=out_channels,
        stride_per_block=[first_stride, 1],
        norm="GN",
    )


# the transformer's width, which the neck, position embedding, selector, encoder and decoder share
_EMBED_DIM = 128

model.backbone.stem = L(BasicStem)(in_channels=3, out_channels=32, norm="GN")
model.backbone.stages = [_stage(32, 32, 1), _stage(32, 64, 2), _stage(64, 128, 2), _stage(128, 256, 2)]
model.backbone.freeze_at = 0
model.neck.input_shapes = {"res3": ShapeSpec(channels=64), "res4": ShapeSpec(channels=128), "res5": ShapeSpec(channels=256)}
model.neck.out_channels = _EMBED_DIM
model.neck.norm_layer = L(nn.GroupNorm)(num_groups=32, num_channels=_EMBED_DIM)
model.position_embedding.num_pos_feats = _EMBED_DIM // 2  # sine features per axis, x and y concatenated
model.embed_dim = _EMBED_DIM
selector = model.transformer.foreground_selector
selector.embed_dim = _EMBED_DIM
selector.cascade_keep_ratios = [1.0, 0.8, 0.6]
for part in (model.transformer.encoder, model.transformer.decoder):
    part.num_layers = 3
    part.embed_dim = _EMBED_DIM
    part.feedforward_dim = 4 * _EMBED_DIM
model.transformer.encoder.num_fine_grained_tokens = 100
model.transformer.embed_dim = _EMBED_DIM
model.transformer.num_queries = 100
model.denoising.dn_number = 20
model.num_detections = 100
