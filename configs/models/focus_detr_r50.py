# Focus-DETR R50, 4 feature levels: the official model (spec section 10.1) with every method knob exposed.
import math

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet
from torch import nn

from focus_detr.layers.position_embedding import PositionEmbeddingSine
from focus_detr.modeling import (
    CascadeDualAttentionEncoder,
    ChannelMapper,
    ContrastiveDenoising,
    DINODecoder,
    FocusDETR,
    FocusDETRCriterion,
    FocusDETRTransformer,
    ForegroundTargetAssigner,
    ForegroundTokenSelector,
    HungarianMatcher,
)

model = L(FocusDETR)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
        freeze_at=1,
    ),
    neck=L(ChannelMapper)(
        input_shapes={
            "res3": ShapeSpec(channels=512),
            "res4": ShapeSpec(channels=1024),
            "res5": ShapeSpec(channels=2048),
        },
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        num_outs=4,
        kernel_size=1,
        norm_layer=L(nn.GroupNorm)(num_groups=32, num_channels=256),
    ),
    position_embedding=L(PositionEmbeddingSine)(
        num_pos_feats=128, temperature=10000, normalize=True, offset=-0.5, scale=2 * math.pi, eps=1e-6
    ),
    transformer=L(FocusDETRTransformer)(
        foreground_selector=L(ForegroundTokenSelector)(
            embed_dim=256,
            num_levels=4,
            keep_ratio=0.5,  # rho: foreground share of each image's valid tokens
            cascade_keep_ratios=[1.0, 0.8, 0.6, 0.6, 0.4, 0.2],  # one per encoder layer
            top_down_modulation=True,
            modulation_init_range=0.3,  # the per-level modulation weights start in U(-0.3, 0.3)
            token_ranking="foreground",  # what picks the kept tokens ("random": the ablation's control)
        ),
        encoder=L(CascadeDualAttentionEncoder)(
            num_layers=6,
            embed_dim=256,
            num_heads=8,
            feedforward_dim=2048,
            num_levels=4,
            num_points=4,
            attn_dropout=0.0,
            ffn_dropout=0.0,
            num_fine_grained_tokens=300,
            fine_grained_scoring="multi_category",  # what ranks the fine-grained tokens ("foreground": the ablation)
        ),
        decoder=L(DINODecoder)(
            num_layers=6,
            embed_dim=256,
            num_heads=8,
            feedforward_dim=2048,
            num_levels=4,
            num_points=4,
            attn_dropout=0.0,
            ffn_dropout=0.0,
            look_forward_twice=True,
        ),
        embed_dim=256,
        num_levels=4,
        num_queries=900,
        proposal_base_size=0.05,  # the two-stage proposals' box side at the finest level, doubling per level
    ),
    criterion=L(FocusDETRCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2.0),
        class_weight=1.0,
        bbox_weight=5.0,
        giou_weight=2.0,
        focal_alpha=0.25,
        focal_gamma=2.0,
        foreground_assigner=L(ForegroundTargetAssigner)(
            strides=[8, 16, 32, 64],
            scale_ranges=[[-1, 64], [64, 128], [128, 256], [256, 999999]],
        ),
        foreground_loss_weight=1.5,
        foreground_focal_alpha=0.25,
        foreground_focal_gamma=2.0,
        weight_dict={},  # detrex's name: the weight of single loss keys, e.g. {"loss_bbox_dn": 2.0}
    ),
    denoising=L(ContrastiveDenoising)(
        num_classes="${..num_classes}", dn_number=100, label_noise_ratio=0.5, box_noise_scale=1.0
    ),
    num_classes=80,
    embed_dim=256,
    num_detections=300,
    class_prior_prob=0.01,  # the class heads' initial foreground probability (their bias)
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    fold_frozen_batchnorm=True,
    aux_loss=True,  # every decoder layer's losses (False: the last layer's only)
    backbone_channels_last=True,  # faster oneDNN convolutions on CPU; same results up to float rounding
)
