"""Checks that the parts of a :class:`~focus_detr.modeling.focus_detr.FocusDETR` were built for each other.

Each part is configured on its own (``model.backbone``, ``model.neck``, ``model.transformer``, ``model.criterion``),
so one override can leave them disagreeing: a neck reading a backbone output that is not produced, levels of other
widths or counts, or a foreground assigner whose strides are not those of the levels (which trains silently on
wrong foreground targets). Each check raises a ValueError naming the settings that disagree, at build time.
"""
from typing import Dict, Optional, Tuple

from torch import nn

from ..layers.ms_deform_attn import MultiScaleDeformableAttention
from ..layers.position_embedding import PositionEmbeddingSine
from .neck import ChannelMapper

__all__ = ["check_class_counts", "check_position_embedding", "check_token_widths", "level_strides"]


def _token_width(module):
    """The token width ``module`` was built for: its first LayerNorm's (None without one)."""
    return next((m.normalized_shape[-1] for m in module.modules() if isinstance(m, nn.LayerNorm)), None)


def _deformable_levels(module) -> Optional[int]:
    """The number of levels the deformable attention of ``module`` samples (None without one)."""
    return next((m.num_levels for m in module.modules() if isinstance(m, MultiScaleDeformableAttention)), None)


def _require_one_value(values: Dict[str, Optional[int]], what: str, remedy: str) -> None:
    """ValueError listing every setting of ``values`` (setting -> value, None: the part does not say) unless the
    known ones agree."""
    known = {key: value for key, value in values.items() if value is not None}
    if len(set(known.values())) > 1:
        listed = ", ".join(f"{key} {value}" for key, value in known.items())
        raise ValueError(f"FocusDETR: the parts are built for {what} ({listed}); {remedy}")


def check_position_embedding(position_embedding) -> None:
    """The token layout rebuilds the sine embedding from its settings and caches it per input size, so another
    module (a learnt embedding, a subclass with its own forward) would be accepted and never called."""
    if type(position_embedding) is not PositionEmbeddingSine:
        raise ValueError(
            "FocusDETR: model.position_embedding must be a focus_detr.layers.position_embedding.PositionEmbeddingSine "
            f"(its embeddings are built from its settings once per input size), got {type(position_embedding).__name__}"
        )


def check_token_widths(embed_dim, position_embedding, neck, transformer) -> None:
    """ValueError naming every width when the parts were built for tokens of other widths (one override of
    ``model.embed_dim`` alone): a shape error at the first forward otherwise, naming no setting."""
    widths = {
        "model.embed_dim": embed_dim,
        "model.position_embedding.num_pos_feats x 2": 2 * position_embedding.num_pos_feats,
        "model.neck.out_channels": neck.out_channels if isinstance(neck, ChannelMapper) else None,
        "model.neck.norm_layer": _norm_width(neck) if isinstance(neck, ChannelMapper) else None,
        "model.transformer.embed_dim": getattr(transformer, "embed_dim", None),
        "model.transformer.foreground_selector": _token_width(transformer.foreground_selector),
        "model.transformer.encoder": _token_width(transformer.encoder),
        "model.transformer.decoder.embed_dim": getattr(transformer.decoder, "embed_dim", None),
    }
    _require_one_value(widths, "tokens of other widths", "give them all one width (the embed_dim of each part)")


def _check_backbone_channels(backbone) -> None:
    """ValueError naming both settings when a detectron2 ResNet's stem and stages were built for other widths
    (``model.backbone.stem.out_channels=32`` beside the default stages' 64): a shape error at the first forward
    otherwise, naming no setting. Backbones without a stem and stages (Swin) are not checked."""
    stem, stages = getattr(backbone, "stem", None), getattr(backbone, "stages", None)
    if getattr(stem, "out_channels", None) is None or stages is None:
        return
    channels, source = stem.out_channels, "model.backbone.stem.out_channels"
    for stage_name, stage in zip(getattr(backbone, "stage_names", ()), stages):
        for index, block in enumerate(stage):
            if getattr(block, "in_channels", channels) != channels:
                raise ValueError(f"FocusDETR: {source} is {channels}, but block {index} of the backbone's stage "
                                 f"{stage_name} takes {block.in_channels} channels: build model.backbone.stem and "
                                 "model.backbone.stages for each other")
            channels, source = getattr(block, "out_channels", channels), f"the output of {stage_name} block {index}"


def check_class_counts(num_classes, criterion, denoising) -> None:
    """ValueError naming every class count when the loss or the denoising were built for another number of classes
    than the heads (an override of the count the configs derive from ``model.num_classes``): a smaller one drew the
    denoising's label noise from some classes only, without an error."""
    counts = {
        "model.num_classes": num_classes,
        "model.criterion.num_classes": getattr(criterion, "num_classes", None),
        "model.denoising.num_classes": getattr(denoising, "num_classes", None),
    }
    _require_one_value(counts, "other numbers of classes",
                       "set model.num_classes alone (the configs give the criterion and the denoising its value)")


def _norm_width(neck: ChannelMapper) -> Optional[int]:
    norm = neck.convs[0].norm if len(neck.convs) else None
    for name in ("num_channels", "num_features"):
        if hasattr(norm, name):
            return getattr(norm, name)
    return None


def _check_levels(neck_levels: Optional[int], transformer) -> None:
    levels = {
        "model.neck.num_outs": neck_levels,
        "model.transformer.num_levels": transformer.num_levels,
        "model.transformer.encoder.num_levels": _deformable_levels(transformer.encoder),
        "model.transformer.decoder.num_levels": _deformable_levels(transformer.decoder),
    }
    _require_one_value(levels, "other numbers of feature levels", "give them all one")


def level_strides(backbone, neck, transformer, criterion) -> Optional[Tuple[int, ...]]:
    """The stride of each feature level the transformer sees, finest first, from the backbone outputs the neck
    reads (each extra level halves the last); None for a neck other than :class:`ChannelMapper`. Checks that a
    ResNet's stem and stages fit, that the neck reads outputs the backbone produces, with their channels, that every
    part expects as many levels, and that the foreground assigner's strides are these."""
    _check_backbone_channels(backbone)
    if not isinstance(neck, ChannelMapper):
        _check_levels(None, transformer)
        return None
    outputs = backbone.output_shape()
    for name, conv in zip(neck.in_features, neck.convs):
        if name not in outputs:
            raise ValueError(
                f"FocusDETR: model.neck.in_features reads {name!r}, which the backbone does not output (its outputs: "
                f"{', '.join(outputs)}; model.backbone.out_features sets them)"
            )
        if outputs[name].channels is not None and outputs[name].channels != conv.conv.in_channels:
            raise ValueError(
                f"FocusDETR: model.neck.input_shapes[{name!r}] has {conv.conv.in_channels} channels, the backbone's "
                f"{name!r} output has {outputs[name].channels}"
            )
    _check_levels(len(neck.convs) + len(neck.extra_convs), transformer)
    strides = [outputs[name].stride for name in neck.in_features]
    if any(stride is None for stride in strides):
        return None
    for _ in neck.extra_convs:
        strides.append(strides[-1] * 2)
    strides = tuple(int(stride) for stride in strides)
    assigner = getattr(criterion, "foreground_assigner", None)
    if assigner is not None and tuple(assigner.strides) != strides:
        raise ValueError(
            f"FocusDETR: model.criterion.foreground_assigner.strides {list(assigner.strides)} are not the strides of "
            f"the feature levels, {list(strides)} (the backbone's {', '.join(neck.in_features)} and "
            f"{len(neck.extra_convs)} extra level(s)); the foreground targets would be placed wrongly: set them to "
            f"{list(strides)} (and its scale_ranges to match)"
        )
    return strides
