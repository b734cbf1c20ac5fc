# The small configuration of ../shared/fixtures/focus_detr_tiny.pt (see its .md): the official R50 model with a
# narrow 4x2-block ResNet, 2 encoder / 2 decoder layers, FFN width 64, 50 queries and 6 denoising groups' worth of
# dn queries. Everything else is the official configuration.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, BottleneckBlock, ResNet

from ..models.focus_detr_r50 import model


def _stage(in_channels, bottleneck_channels, out_channels, first_stride):
    return L(ResNet.make_stage)(
        block_class=BottleneckBlock,
        num_blocks=2,
        in_channels=in_channels,
        bottleneck_channels=bottleneck_channels,
        out_channels=out_channels,
        stride_per_block=[first_stride, 1],
        norm="FrozenBN",
        stride_in_1x1=False,
    )


model.backbone.stem = L(BasicStem)(in_channels=3, out_channels=16, norm="FrozenBN")
model.backbone.stages = [_stage(16, 8, 32, 1), _stage(32, 8, 48, 2), _stage(48, 16, 64, 2), _stage(64, 16, 80, 2)]
model.neck.input_shapes = {"res3": ShapeSpec(channels=48), "res4": ShapeSpec(channels=64), "res5": ShapeSpec(channels=80)}
model.transformer.encoder.num_layers = 2
model.transformer.encoder.feedforward_dim = 64
model.transformer.decoder.num_layers = 2
model.transformer.decoder.feedforward_dim = 64
# The official code applies the first entries of its 6-entry cascade to a 2-layer encoder.
model.transformer.foreground_selector.cascade_keep_ratios = [1.0, 0.8]
model.transformer.num_queries = 50
model.denoising.dn_number = 6
