"""The Focus-DETR meta-architecture: image batching, backbone, neck, transformer, heads, losses and inference."""
import contextlib
import logging
import math
import numbers
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.structures import ImageList, Instances
from torch import nn

from ..checkpoint.official import convert_official_state_dict, is_official_layout
from ..layers.box_ops import box_xyxy_to_cxcywh, inverse_sigmoid
from ..layers.frozen_bn_folding import enable_frozen_bn_folding
from ..layers.group_norm import use_channels_last_group_norm
from ..layers.mlp import MLP
from ..layers.position_embedding import PositionEmbeddingSine
from .assembly_checks import check_class_counts, check_position_embedding, check_token_widths, level_strides
from .criterion import FocusDETRCriterion
from .denoising import ContrastiveDenoising, DenoisingQueries, split_denoising_outputs
from .detections import batch_images, instances_of, rescale_detections, top_detections
from .input_checks import check_batched_inputs, check_pixel_range, output_side
from .token_layout import token_layout
from .token_selection import token_selection_of, token_selection_tensors
from .transformer import FocusDETRTransformer, TransformerOutput

logger = logging.getLogger(__name__)


def _official_layout_to_model_keys(module, state_dict, prefix, *unused):
    """``load_state_dict`` pre-hook: an official detrex Focus-DETR state dict is converted to this model's keys in
    place, so that detectron2's ``DetectionCheckpointer`` (detrex's loader) and a plain ``load_state_dict`` load it
    whole; without it most of the transformer kept its random weights, with only a log line of missing keys. The
    aliases of a head whose shape the model does not share (another class count) fill nothing: fvcore drops the
    mismatched ``class_embed.*`` before this hook, and rebuilding them from the aliases made its load raise."""
    keys = {key[len(prefix):]: key for key in state_dict if key.startswith(prefix)}
    if not is_official_layout(keys):
        return
    logger.info("The state dict is in the official detrex Focus-DETR layout; converting its keys.")
    model_shapes = {key: value.shape for key, value in module.state_dict().items()}
    converted = convert_official_state_dict({short: state_dict.pop(key) for short, key in keys.items()}, model_shapes)
    state_dict.update((prefix + key, value) for key, value in converted.items())


@META_ARCH_REGISTRY.register()
class FocusDETR(nn.Module):
    """Focus-DETR ("Less is More: Focus Attention for Efficient DETR").

    Args:
        backbone: a detectron2 backbone.
        neck: maps the backbone's outputs to ``transformer.num_levels`` maps of ``embed_dim`` channels.
        position_embedding: sine embedding of each level's mask.
        transformer: :class:`FocusDETRTransformer`.
        criterion: :class:`FocusDETRCriterion` (returns weighted losses).
        denoising: :class:`ContrastiveDenoising` queries added in training.
        num_classes: object categories.
        embed_dim: token width.
        num_detections: detections kept per image at inference (top scores over queries x classes).
        pixel_mean, pixel_std: per-channel normalisation, in the input's value range and channel order.
        class_prior_prob: initial foreground probability of the class heads' bias.
        fold_frozen_batchnorm: fold the backbone's FrozenBatchNorm layers into the convolutions before them, at
            inference and in training (same state dict; outputs and gradients equal up to float rounding).
        aux_loss: train every decoder layer on its own predictions (detrex's ``aux_loss``; the losses ``_{i}`` and
            ``_dn_{i}`` of layers 0 .. L-2). False: only the last layer's, the proposals' and the foreground losses.
        backbone_channels_last: feed the backbone channels-last (NHWC) images, the layout oneDNN convolutions run
            fastest in on CPUs (same results up to float rounding); for convolutional backbones. Its weights are
            stored channels-last too, and its ``nn.GroupNorm`` layers become
            :class:`~focus_detr.layers.group_norm.GroupNorm` (same parameters and state dict, a fast backward on
            that layout).
    """

    def __init__(
        self,
        backbone: Backbone,
        neck: nn.Module,
        position_embedding: PositionEmbeddingSine,
        transformer: FocusDETRTransformer,
        criterion: FocusDETRCriterion,
        denoising: ContrastiveDenoising,
        num_classes: int = 80,
        embed_dim: int = 256,
        num_detections: int = 300,
        pixel_mean: Sequence[float] = (123.675, 116.280, 103.530),
        pixel_std: Sequence[float] = (58.395, 57.120, 57.375),
        class_prior_prob: float = 0.01,
        fold_frozen_batchnorm: bool = True,
        aux_loss: bool = True,
        backbone_channels_last: bool = False,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"FocusDETR: num_classes must be >= 1, got {num_classes}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or any(s <= 0 for s in pixel_std):
            raise ValueError(f"FocusDETR: pixel_mean {pixel_mean} / pixel_std {pixel_std} must have one value per "
                             "channel of the 3-channel images, and std be > 0")
        if not 0.0 < class_prior_prob < 1.0:
            raise ValueError(f"FocusDETR: class_prior_prob must be in (0, 1), got {class_prior_prob}")
        if not isinstance(aux_loss, bool):
            raise ValueError(f"FocusDETR: aux_loss must be True or False, got {aux_loss!r}")
        check_position_embedding(position_embedding)
        check_class_counts(num_classes, criterion, denoising)
        check_token_widths(embed_dim, position_embedding, neck, transformer)
        # the stride of each level (None for another neck): the token pictures place the levels with them
        self.level_strides = level_strides(backbone, neck, transformer, criterion)
        if isinstance(criterion, FocusDETRCriterion):
            criterion.check_weight_dict(transformer.decoder.num_layers, aux_loss)
        self.aux_loss = aux_loss
        self.backbone = backbone
        if fold_frozen_batchnorm:
            enable_frozen_bn_folding(backbone)
        self.backbone_channels_last = backbone_channels_last
        if backbone_channels_last:
            # Weights in the images' layout: oneDNN would otherwise reorder every convolution's weight on every call.
            backbone.to(memory_format=torch.channels_last)
            use_channels_last_group_norm(backbone)
        self.neck = neck
        self.position_embedding = position_embedding
        self.transformer = transformer
        self.criterion = criterion
        self.denoising = denoising
        self.num_classes = num_classes
        self.num_detections = num_detections
        self._warned_of_mixed_sizes = False  # once per model: an evaluation at batch > 1 would repeat it per batch
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

        # One head per decoder layer, and a last one for the two-stage proposals (also the encoder's category scorer).
        num_heads = transformer.decoder.num_layers + 1
        self.class_embed = nn.ModuleList(nn.Linear(embed_dim, num_classes) for _ in range(num_heads))
        self.bbox_embed = nn.ModuleList(MLP(embed_dim, embed_dim, 4, 3) for _ in range(num_heads))
        self.label_enc = nn.Embedding(num_classes, embed_dim)
        bias = -math.log((1 - class_prior_prob) / class_prior_prob)
        for head in self.class_embed:
            nn.init.constant_(head.bias, bias)
        for head in self.bbox_embed:
            nn.init.constant_(head.layers[-1].weight, 0.0)
            nn.init.constant_(head.layers[-1].bias, 0.0)
        self.register_load_state_dict_pre_hook(_official_layout_to_model_keys)

    @property
    def num_detections(self) -> int:
        """Detections returned per image (the highest-scoring query-class pairs)."""
        return self._num_detections

    @num_detections.setter
    def num_detections(self, value: int) -> None:
        # a property, so that an assignment to a built model is checked too: 0 returned no detection without a word
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"FocusDETR: num_detections must be an integer >= 1, got {value!r}")
        # here rather than at build alone: an assignment to a built model was capped without a word
        candidates = getattr(self.transformer, "num_queries", value) * self.num_classes
        if value > candidates:
            logger.warning(f"model.num_detections is {value}, but the model has only {candidates} candidates "
                           "(queries x classes): it returns at most that many detections per image")
        self._num_detections = int(value)

    def __setstate__(self, state):
        if "num_detections" in state:  # a model pickled whole before it was a property
            state["_num_detections"] = state.pop("num_detections")
        super().__setstate__(state)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------------------------------------- inputs
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad (bottom/right, with 0 after normalisation) -> ImageList ``(B, 3, H, W)``."""
        check_batched_inputs(batched_inputs)
        if self.pixel_mean.dtype != torch.float32:  # .half() / .to(torch.bfloat16): a dtype mismatch deep inside
            raise ValueError(f"FocusDETR runs with float32 weights, got {self.pixel_mean.dtype}: load the weights "
                             "again (model.float() alone keeps their rounded values); for bfloat16 or float16 keep "
                             "them float32 and autocast "
                             "(train.inference_amp.enabled=True, FocusDETRPredictor(..., amp=True), or torch.autocast "
                             "around the call)")
        images = []
        for i, item in enumerate(batched_inputs):
            image = item.get("image")
            if not torch.is_tensor(image) or image.dim() != 3 or image.shape[0] != self.pixel_mean.shape[0]:
                shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
                raise ValueError(
                    f"FocusDETR: batched_inputs[{i}]['image'] must be a ({self.pixel_mean.shape[0]}, H, W) tensor, "
                    f"got {shape}"
                )
            if image.shape[1] < 1 or image.shape[2] < 1:
                raise ValueError(f"FocusDETR: batched_inputs[{i}]['image'] is empty: {tuple(image.shape)}")
            if image.dtype != torch.uint8 and not image.is_floating_point():  # 0..65535 would pass as bright pixels
                raise ValueError(f"FocusDETR: batched_inputs[{i}]['image'] has dtype {image.dtype}; pixels are uint8 "
                                 "(or floats in 0..255): scale other images to 0..255 first, as "
                                 "focus_detr.data.read_image does")
            if image.is_floating_point() and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
                check_pixel_range(image, i)
            images.append((image.to(self.device).float() - self.pixel_mean) / self.pixel_std)
        return batch_images(images)

    def prepare_targets(self, batched_inputs: List[Dict]) -> List[Dict]:
        """Instances -> ``{"labels" (n,), "boxes" (n, 4) cxcywh normalised by the image size, "image_size"}`` on the
        model's device. Checked and converted where the instances are (the data loader's host memory: no device
        read), then moved."""
        targets = []
        for i, item in enumerate(batched_inputs):
            if "instances" not in item:
                raise ValueError(f"FocusDETR: training needs batched_inputs[{i}]['instances'] (the model is in "
                                 "training mode: model.eval() for inference)")
            instances = item["instances"]
            h, w = instances.image_size
            boxes = instances.gt_boxes.tensor
            labels = instances.gt_classes
            if boxes.numel() and (
                not torch.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any()
            ):
                raise ValueError(f"FocusDETR: batched_inputs[{i}] has non-finite or inverted (x2 < x1) gt boxes")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"FocusDETR: batched_inputs[{i}] has gt_classes outside [0, {self.num_classes}): "
                    f"{labels.unique().tolist()}"
                )
            boxes = box_xyxy_to_cxcywh(boxes / boxes.new_tensor([w, h, w, h], dtype=torch.float32))
            targets.append({"labels": labels.to(self.device), "boxes": boxes.to(self.device), "image_size": (h, w)})
        return targets

    # ------------------------------------------------------------------------------------------------ forward
    def image_features(self, images: ImageList) -> List[torch.Tensor]:
        """Backbone -> neck on a padded batch: one ``(B, C, H_l, W_l)`` map per level."""
        pixels = images.tensor
        if self.backbone_channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self.neck(self.backbone(pixels))

    def run_transformer(
        self, images: ImageList, denoising: Optional[DenoisingQueries] = None, last_layer_only: bool = False,
        features: Optional[List[torch.Tensor]] = None,
    ) -> TransformerOutput:
        """Backbone -> neck (or the given ``features`` of :meth:`image_features`) -> token layout (padding masks,
        position embeddings, ...) -> transformer on a padded batch. Padding masks hold for each image's own size also
        at test time (unlike the official code). A smaller image of a padded batch still differs from itself alone:
        the backbone sees the padding, and every encoder layer keeps a share of the batch's largest foreground budget
        (tests/modeling/test_batched_inference.py). last_layer_only: the decoder's last layer alone reaches the
        output (inference)."""
        if features is None:
            features = self.image_features(images)
        layout = token_layout(
            images.image_sizes,
            images.tensor.shape[-2:],
            [f.shape[-2:] for f in features],
            self.position_embedding,
            self.transformer.proposal_base_size,
            images.tensor.device,
        )
        return self.transformer(features, layout, self.class_embed, self.bbox_embed, denoising, last_layer_only)

    def predict(self, out: TransformerOutput):
        """Class logits ``(D, B, P+Q, K)`` and boxes ``(D, B, P+Q, 4)`` (normalised cxcywh) of the decoder layers in
        ``out`` (all of them, or with ``last_layer_only`` the last: D = 1).

        In float32 also under autocast: the scores rank the detections and the boxes become pixel coordinates, both
        finer than bfloat16's 8 bits resolve (ties, pixel steps at 1333 px); these heads are small next to the rest.
        """
        num_layers = out.hidden_states.shape[0]
        first_layer = self.transformer.decoder.num_layers - num_layers  # each layer has its own heads
        logits, boxes = [], []
        with _float32_under_autocast(self.device.type):
            for i in range(num_layers):
                hidden = out.hidden_states[i].float()
                logits.append(self.class_embed[first_layer + i](hidden))
                box_deltas = self.bbox_embed[first_layer + i](hidden)
                boxes.append((box_deltas + inverse_sigmoid(out.layer_boxes[i].float())).sigmoid())
        return torch.stack(logits), torch.stack(boxes)

    def forward(self, batched_inputs: List[Dict]):
        """Training: dict of weighted losses. Inference: list of ``{"instances": Instances}``."""
        if self.training:
            return self.forward_training(batched_inputs)
        self.warn_of_mixed_sizes(batched_inputs)
        return self.forward_inference(batched_inputs)

    def forward_training(
        self, batched_inputs: List[Dict], denoising: Optional[DenoisingQueries] = None
    ) -> Dict[str, torch.Tensor]:
        """Losses for a batch; ``denoising`` replaces the randomly generated denoising queries when given."""
        images = self.preprocess_image(batched_inputs)
        targets = self.prepare_targets(batched_inputs)
        # The backbone before the denoising queries, as in the official code: a seeded run draws its random numbers
        # (Swin's stochastic depth, then the denoising noise) in the official order.
        features = self.image_features(images)
        if denoising is None:
            denoising = self.denoising(targets, self.label_enc, self.transformer.num_queries)
        out = self.run_transformer(images, denoising, features=features)
        logits, boxes = self.predict(out)
        if denoising is None:
            # Keeps label_enc in the graph when a batch has no boxes, so DDP sees every parameter used.
            logits = logits + 0.0 * self.label_enc.weight[0, 0]
        if not self.aux_loss:
            # Cut from the layers' stacked predictions: the earlier layers' heads still get (zero) gradients, so DDP
            # sees every parameter used.
            logits, boxes = logits[-1:], boxes[-1:]
        logits, boxes, dn_outputs = split_denoising_outputs(logits, boxes, denoising)
        outputs = {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])],
            "enc_outputs": {"pred_logits": out.encoder_logits, "pred_boxes": out.encoder_boxes},
            "foreground_logits": out.selection.foreground_logits,
            "spatial_shapes": out.spatial_shapes_list,  # host ints: the foreground targets read nothing back
        }
        return self.criterion(outputs, targets, denoising, dn_outputs)

    def forward_inference(self, batched_inputs: List[Dict], return_token_selection: bool = False) -> List[Dict]:
        """Detections per image, rescaled to its ``height`` x ``width`` (default: the input size).

        Differentiable under the caller's grad mode, as detectron2's models are; the predictor and
        ``inference_on_dataset`` run it under ``torch.no_grad()`` (faster in-place paths).

        With ``return_token_selection``, each result also holds ``token_selection`` (per-token foreground logits,
        kept and fine-grained token indices per encoder layer, level layout), ``image_size`` (the network input's
        ``(h, w)``) and ``padded_size`` (the padded batch's ``(H, W)``, which the token grid divides).
        """
        images = self.preprocess_image(batched_inputs)
        return self.detection_outputs(self.detect(images, return_token_selection), images, batched_inputs)

    def warn_of_mixed_sizes(self, batched_inputs: List[Dict]) -> None:
        """Warns once per model when an inference call's batch holds images of different sizes: the call of
        ``model(batched_inputs)``, which cannot group them as the predictor does. Tools that batch sizes on purpose
        (the export's checks, the parity check) call :meth:`forward_inference` instead."""
        if self._warned_of_mixed_sizes or torch.jit.is_tracing():
            return
        sizes = [tuple(item["image"].shape[-2:]) for item in batched_inputs  # bad inputs: preprocess_image names them
                 if isinstance(item, dict) and torch.is_tensor(item.get("image")) and item["image"].dim() == 3]
        if len(set(sizes)) < 2:
            return
        self._warned_of_mixed_sizes = True
        shown = ", ".join(f"{height}x{width}" for height, width in sizes)
        logger.warning(
            f"FocusDETR: a batch of images of different sizes ({shown}) is padded to the largest, which changes the "
            "smaller ones' detections and token selection (the backbone and the neck see the padding, and every "
            "image keeps the batch's largest token budget): give one size per call, or one image at a time, for the "
            "detections each image gets alone (FocusDETRPredictor.predict_batch groups by size)")

    def detect(self, images: ImageList, return_token_selection: bool = False) -> Tuple:
        """Padded pixels -> the top detections ``(scores, labels, boxes)`` (:meth:`select_detections`), with
        ``return_token_selection`` followed by the batch's :func:`token_selection_tensors`: all of inference that
        runs on the device. Its shapes follow from the image sizes alone and it reads nothing back from the device,
        so it can be captured as one CUDA graph per input size (:mod:`focus_detr.engine.cuda_graphs`)."""
        out = self.run_transformer(images, last_layer_only=True)
        logits, boxes = self.predict(out)
        detections = self.select_detections(logits[-1], boxes[-1])
        return (*detections, token_selection_tensors(out)) if return_token_selection else detections

    def detection_outputs(self, detections: Tuple, images: ImageList, batched_inputs: List[Dict]) -> List[Dict]:
        """:meth:`detect`'s outputs -> ``[{"instances": Instances}]``, each in its input's ``height`` x ``width``
        (default: the network input's size), without empty boxes; with a token selection, each also holds
        ``token_selection`` (:func:`token_selection_of`), ``image_size``, ``padded_size`` and ``level_strides`` (the
        stride of each level, None when the neck does not say)."""
        output_sizes = [
            (output_side(item, "height", i, image_size[0]), output_side(item, "width", i, image_size[1]))
            for i, (item, image_size) in enumerate(zip(batched_inputs, images.image_sizes))
        ]
        results = instances_of(*detections[:3], images.image_sizes)
        processed = [{"instances": instances} for instances in rescale_detections(results, output_sizes)]
        if len(detections) > 3:
            selection = detections[3]
            counts = selection["focus_token_nums"].tolist()
            for i, (entry, image_size) in enumerate(zip(processed, images.image_sizes)):
                entry["image_size"] = tuple(image_size)
                entry["padded_size"] = tuple(images.tensor.shape[-2:])
                entry["level_strides"] = self.level_strides
                entry["token_selection"] = token_selection_of(selection, i, counts[i])
        return processed

    def select_detections(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor):
        """:func:`top_detections` of the model's ``num_detections``."""
        return top_detections(pred_logits, pred_boxes, self.num_detections)

    def postprocess(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor, image_sizes) -> List[Instances]:
        """:meth:`select_detections` -> Instances in input-image pixels."""
        return instances_of(*self.select_detections(pred_logits, pred_boxes), image_sizes)


def _float32_under_autocast(device_type: str):
    """A region without autocast when it is on for ``device_type``; otherwise nothing changes (float32 runs as is)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
