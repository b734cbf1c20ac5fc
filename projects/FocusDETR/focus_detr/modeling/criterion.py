"""Training losses of Focus-DETR (spec 5.2, 7): set losses for every prediction set plus the foreground loss."""

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch import Tensor, nn

from ..layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .denoising import DenoisingQueries
from .foreground_targets import ForegroundTargetAssigner, foreground_focal_loss
from .matcher import HungarianMatcher

Indices = List[Tuple[Tensor, Tensor]]

SET_LOSS_NAMES = ("loss_class", "loss_bbox", "loss_giou")


def loss_keys(num_decoder_layers: int, aux_loss: bool = True) -> List[str]:
    """Every key :class:`FocusDETRCriterion` produces for a decoder of ``num_decoder_layers`` layers, with or without
    the auxiliary losses of layers 0 .. L-2 (``_{i}``, ``_dn_{i}``)."""
    suffixes = ["", "_enc", "_dn"]
    if aux_loss:
        aux_layers = range(num_decoder_layers - 1)
        suffixes += [f"_{i}" for i in aux_layers] + [f"_dn_{i}" for i in aux_layers]
    return [name + suffix for suffix in suffixes for name in SET_LOSS_NAMES] + ["select_loss"]


def sigmoid_focal_loss_sum(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Element-wise sigmoid focal loss of ``(..., B, Q, K)`` logits vs {0,1} targets, reduced as the official
    ``.mean(1).sum()`` per set (mean over queries, sum over batch and classes) -> ``(...)``; multiply by Q for the
    plain sum."""
    prob = logits.sigmoid()
    ce_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss.mean(-2).sum((-2, -1))


class FocusDETRCriterion(nn.Module):
    """All training losses, already multiplied by their weights (the dict the trainer sums).

    Produced keys, for L decoder layers (aux layers i = 0 .. L-2):
    ``loss_{class,bbox,giou}``, ``loss_{class,bbox,giou}_{i}``, ``loss_{class,bbox,giou}_enc``,
    ``loss_{class,bbox,giou}_dn``, ``loss_{class,bbox,giou}_dn_{i}`` and ``select_loss``.
    Every prediction set is Hungarian-matched on its own; denoising predictions use the fixed matching
    "positive dn query of group g <-> its GT". Without denoising the dn keys are zero tensors so the key set is stable.
    """

    def __init__(
        self,
        num_classes: int = 80,
        matcher: Optional[HungarianMatcher] = None,
        class_weight: float = 1.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        foreground_assigner: Optional[ForegroundTargetAssigner] = None,
        foreground_loss_weight: float = 1.5,
        foreground_focal_alpha: float = 0.25,
        foreground_focal_gamma: float = 2.0,
        weight_dict: Optional[Dict[str, float]] = None,
    ):
        """``matcher`` / ``foreground_assigner`` default to ``HungarianMatcher()`` / ``ForegroundTargetAssigner()``.

        ``class_weight`` / ``bbox_weight`` / ``giou_weight`` weigh every prediction set's losses of that kind, and
        ``foreground_loss_weight`` the ``select_loss``. ``weight_dict`` (detrex's name) sets the weight of single
        keys instead, e.g. ``{"loss_bbox_dn": 2.0, "loss_class_enc": 0.0}``; keys the model does not produce are
        refused when the model is built (:meth:`check_weight_dict`).
        """
        super().__init__()
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"FocusDETRCriterion: num_classes must be a positive int, got {num_classes}")
        for name, value in (
            ("class_weight", class_weight),
            ("bbox_weight", bbox_weight),
            ("giou_weight", giou_weight),
            ("foreground_loss_weight", foreground_loss_weight),
            ("focal_gamma", focal_gamma),
            ("foreground_focal_gamma", foreground_focal_gamma),
        ):
            if not value >= 0:
                raise ValueError(f"FocusDETRCriterion: {name} must be >= 0, got {value}")
        weight_dict = dict(weight_dict or {})
        for key, value in weight_dict.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 <= value < math.inf
            ):
                raise ValueError(f"FocusDETRCriterion: weight_dict maps loss keys to finite weights >= 0, got "
                                 f"{key!r}: {value!r}")
        if class_weight == bbox_weight == giou_weight == foreground_loss_weight == 0 and not any(
            weight_dict.values()
        ):  # a loss of 0: nothing learnt
            raise ValueError("FocusDETRCriterion: class_weight, bbox_weight, giou_weight and foreground_loss_weight are "
                             "all 0: the loss would be 0 and training would change nothing")
        for name, value in (("focal_alpha", focal_alpha), ("foreground_focal_alpha", foreground_focal_alpha)):
            if not 0 <= value <= 1:
                raise ValueError(f"FocusDETRCriterion: {name} must be in [0, 1], got {value}")
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.foreground_assigner = (
            foreground_assigner if foreground_assigner is not None else ForegroundTargetAssigner()
        )
        self.loss_weights = {"loss_class": class_weight, "loss_bbox": bbox_weight, "loss_giou": giou_weight}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.foreground_loss_weight = foreground_loss_weight
        self.weight_dict = {key: float(value) for key, value in weight_dict.items()}
        self.foreground_focal_alpha = foreground_focal_alpha
        self.foreground_focal_gamma = foreground_focal_gamma

    def check_weight_dict(self, num_decoder_layers: int, aux_loss: bool) -> None:
        """ValueError unless every ``weight_dict`` key is one that the model produces (:func:`loss_keys`) and some
        loss keeps a weight above 0."""
        produced = loss_keys(num_decoder_layers, aux_loss)
        unknown = [key for key in self.weight_dict if key not in produced]
        if unknown:
            last = num_decoder_layers - 2
            suffixes = "'', _enc, _dn" + (f", _0 .. _{last}, _dn_0 .. _dn_{last}" if aux_loss and last >= 0 else "")
            hint = ""
            if any(key.endswith("_dn_enc") for key in unknown):
                hint = "; detrex's weight_dict lists *_dn_enc keys, but no such loss is computed: drop them"
            elif not aux_loss and any(key in loss_keys(num_decoder_layers) for key in unknown):
                hint = "; model.aux_loss is False, so the layers before the last have no losses"
            raise ValueError(
                f"FocusDETRCriterion: model.criterion.weight_dict has keys the model does not produce: "
                f"{', '.join(map(repr, unknown))} (it produces loss_class, loss_bbox and loss_giou with the suffixes "
                f"{suffixes}, and select_loss){hint}"
            )
        if not any(self.weight_of(key) > 0 for key in produced):
            raise ValueError("FocusDETRCriterion: every loss has weight 0 (model.criterion.weight_dict and the "
                             "*_weight settings): the loss would be 0 and training would change nothing")

    def weight_of(self, key: str) -> float:
        """The weight of loss ``key`` (``loss_bbox_dn_2``, ``select_loss``, ...)."""
        if key in self.weight_dict:
            return self.weight_dict[key]
        if key == "select_loss":
            return self.foreground_loss_weight
        return self.loss_weights[next(name for name in SET_LOSS_NAMES if key.startswith(name))]

    # ------------------------------------------------------------------ set losses
    def weighted_set_losses(
        self,
        predictions: Dict[str, Dict[str, Tensor]],
        targets: List[Dict[str, Tensor]],
        indices: List[Indices],
        num_boxes: float,
    ) -> Dict[str, Tensor]:
        """Weighted ``loss_class`` (sigmoid focal loss against one-hot matched labels, unmatched queries all zeros),
        ``loss_bbox`` (L1) and ``loss_giou`` (1 - GIoU of the matched boxes) of each prediction set, keyed
        ``name + suffix`` for ``predictions`` ``{suffix: {"pred_logits" (B, Q, K), "pred_boxes" (B, Q, 4) cxcywh}}``
        matched by ``indices`` (one list of per-image ``(query_idx, target_idx)`` per set, in order); each summed and
        divided by ``num_boxes``.

        Sets of one shape, dtype and match count (the decoder layers with the proposals, the denoising layers) are
        computed as one batch ``(S, B, Q, ...)``: the operators (and kernel launches) of one set, not S sets' worth,
        and their matched indices reach the device in one copy.
        """
        suffixes, sets = list(predictions), list(predictions.values())
        device = sets[0]["pred_logits"].device
        target_labels = torch.cat([t["labels"] for t in targets]).to(device)
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(device)
        pairs = matched_pairs(indices, [len(t["labels"]) for t in targets])  # (3, M_s) per set, on the host
        groups: Dict[tuple, List[int]] = {}
        for i, (prediction, set_pairs) in enumerate(zip(sets, pairs)):
            logits, boxes = prediction["pred_logits"], prediction["pred_boxes"]
            groups.setdefault((tuple(logits.shape), logits.dtype, boxes.dtype, set_pairs.shape[1]), []).append(i)
        grouped_pairs = [torch.stack([pairs[i] for i in members], 1) for members in groups.values()]  # (3, S, M)
        grouped_pairs = _to_device(grouped_pairs, device)
        losses = {}
        for members, (batch_idx, query_idx, target_idx) in zip(groups.values(), grouped_pairs):
            logits = torch.stack([sets[i]["pred_logits"] for i in members])
            boxes = torch.stack([sets[i]["pred_boxes"] for i in members])
            set_idx = torch.arange(len(members), device=device)[:, None].expand_as(batch_idx)
            values = {
                "loss_class": self.class_losses(logits, (set_idx, batch_idx, query_idx), target_labels[target_idx]),
                **self.box_losses(boxes[set_idx, batch_idx, query_idx], target_boxes[target_idx].to(boxes)),
            }
            for name, value in values.items():
                for i, loss in zip(members, (value * (self.loss_weights[name] / num_boxes)).unbind()):
                    losses[name + suffixes[i]] = loss
                for i, loss in zip(members, value.unbind()):
                    if name + suffixes[i] in self.weight_dict:  # the weight of this key alone
                        losses[name + suffixes[i]] = loss * (self.weight_dict[name + suffixes[i]] / num_boxes)
        return {name + suffix: losses[name + suffix] for suffix in suffixes for name in SET_LOSS_NAMES}

    def class_losses(self, logits: Tensor, matched: Tuple[Tensor, Tensor, Tensor], labels: Tensor) -> Tensor:
        """Sigmoid focal loss sums (times Q, as the official ``mean(1).sum()``) of ``(S, B, Q, K)`` logits against
        one-hot labels: ``labels`` ``(S, M)`` at the matched ``(set, image, query)`` positions ``matched`` (each
        ``(S, M)``), no class elsewhere -> ``(S,)``."""
        target_classes = torch.full(logits.shape[:3], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[matched] = labels
        onehot = torch.zeros((*logits.shape[:3], self.num_classes + 1), dtype=logits.dtype, device=logits.device)
        onehot.scatter_(3, target_classes.unsqueeze(-1), 1)
        onehot = onehot[..., :-1]
        return sigmoid_focal_loss_sum(logits, onehot, self.focal_alpha, self.focal_gamma) * logits.shape[2]

    @staticmethod
    def box_losses(matched_pred: Tensor, matched_target: Tensor) -> Dict[str, Tensor]:
        """L1 and (1 - GIoU) sums of ``(S, M, 4)`` matched cxcywh boxes -> ``(S,)`` each."""
        loss_bbox = F.l1_loss(matched_pred, matched_target, reduction="none").sum((1, 2))
        # Ordered boxes by construction: predicted sizes are sigmoids, target boxes were checked on the way in
        # (prepare_targets); a NaN makes the loss NaN, which the trainer reports. No device read per prediction set.
        giou = generalized_box_iou(
            box_cxcywh_to_xyxy(matched_pred), box_cxcywh_to_xyxy(matched_target), paired=True, validate=False
        )
        return {"loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum(1)}

    def match_sets(self, predictions: List[Dict[str, Tensor]], targets: List[Dict[str, Tensor]]) -> List[Indices]:
        """The Hungarian matching of each prediction set (each image of each set on its own). Sets of one shape and
        dtype (under autocast the encoder's may be bfloat16) go to the matcher together, as one batch of sets x
        images: one cost tensor and one transfer to the host for all of them instead of one per set."""
        by_shape: Dict[tuple, List[int]] = {}
        for i, prediction in enumerate(predictions):
            logits, boxes = prediction["pred_logits"], prediction["pred_boxes"]
            by_shape.setdefault((tuple(logits.shape), logits.dtype, boxes.dtype), []).append(i)
        matched: List[Optional[Indices]] = [None] * len(predictions)
        batch = len(targets)
        with torch.no_grad():
            for members in by_shape.values():
                logits = torch.cat([predictions[i]["pred_logits"] for i in members])
                boxes = torch.cat([predictions[i]["pred_boxes"] for i in members])
                indices = self.matcher(logits, boxes, targets * len(members))
                for k, i in enumerate(members):
                    matched[i] = indices[k * batch : (k + 1) * batch]
        return matched

    # ------------------------------------------------------------------ helpers
    def num_boxes(self, targets: List[Dict[str, Tensor]], device) -> float:
        """Average number of GT boxes per worker (all-reduced over the process group), at least 1."""
        num_boxes = float(sum(len(t["labels"]) for t in targets))
        world_size = comm.get_world_size()
        if world_size == 1:
            return max(num_boxes, 1.0)  # a single process: from host ints, no device round trip
        num_boxes = torch.as_tensor([num_boxes], dtype=torch.float, device=device)
        torch.distributed.all_reduce(num_boxes)
        return torch.clamp(num_boxes / world_size, min=1).item()

    @staticmethod
    def denoising_indices(targets: List[Dict[str, Tensor]], denoising: DenoisingQueries) -> Indices:
        """Fixed matching of denoising queries: GT j <-> its positive query in every group."""
        indices = []
        for target in targets:
            num_targets = len(target["labels"])
            query_idx = denoising.positive_query_indices(num_targets)
            target_idx = torch.arange(num_targets, dtype=torch.int64).repeat(denoising.dn_num)
            indices.append((query_idx, target_idx))
        return indices

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        outputs: Dict,
        targets: List[Dict[str, Tensor]],
        denoising: Optional[DenoisingQueries] = None,
        dn_outputs: Optional[Dict] = None,
    ) -> Dict[str, Tensor]:
        """
        Args:
            outputs: {"pred_logits" (B, Q, K), "pred_boxes" (B, Q, 4) of the last decoder layer,
                "aux_outputs": [{"pred_logits", "pred_boxes"}] of decoder layers 0 .. L-2,
                "enc_outputs": {"pred_logits", "pred_boxes"} two-stage proposals,
                "foreground_logits" (B, N, 1) raw FTS scores, "spatial_shapes" (h, w) per level: Python ints,
                or a (num_levels, 2) tensor}.
            targets: B dicts {"labels" (n,) int64, "boxes" (n, 4) normalised cxcywh, "image_size" (h, w)}.
            denoising: the denoising queries fed to the decoder (None: no denoising this step).
            dn_outputs: their predictions from ``split_denoising_outputs`` (required iff denoising is given).
        Returns:
            dict of weighted scalar losses (see class docstring).
        """
        pred_logits = outputs["pred_logits"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"FocusDETRCriterion: {len(targets)} targets for a batch of {pred_logits.shape[0]} images")
        if pred_logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"FocusDETRCriterion: pred_logits has {pred_logits.shape[-1]} classes, "
                f"expected num_classes={self.num_classes}"
            )
        if (denoising is None) != (dn_outputs is None):
            raise ValueError("FocusDETRCriterion: denoising and dn_outputs must be given together")
        device = pred_logits.device
        num_boxes = self.num_boxes(targets, device)
        aux_outputs = outputs.get("aux_outputs", [])

        matched_sets = {"": outputs, **{f"_{i}": aux for i, aux in enumerate(aux_outputs)}}
        if "enc_outputs" in outputs:
            matched_sets["_enc"] = outputs["enc_outputs"]
        all_indices = self.match_sets(list(matched_sets.values()), targets)
        losses = self.weighted_set_losses(matched_sets, targets, all_indices, num_boxes)

        losses.update(self.denoising_losses(targets, denoising, dn_outputs, len(aux_outputs), num_boxes, device))

        foreground_logits = outputs["foreground_logits"]
        foreground_targets = self.foreground_assigner(outputs["spatial_shapes"], targets, foreground_logits.device)
        select_loss = foreground_focal_loss(
            foreground_logits,
            foreground_targets,
            alpha=self.foreground_focal_alpha,
            gamma=self.foreground_focal_gamma,
        )
        losses["select_loss"] = select_loss * self.weight_of("select_loss")
        return losses

    def denoising_losses(
        self,
        targets: List[Dict[str, Tensor]],
        denoising: Optional[DenoisingQueries],
        dn_outputs: Optional[Dict],
        num_aux: int,
        num_boxes: float,
        device,
    ) -> Dict[str, Tensor]:
        """Weighted ``loss_*_dn`` and ``loss_*_dn_{i}``; zeros when there is no denoising."""
        suffixes = ["_dn"] + [f"_dn_{i}" for i in range(num_aux)]
        if denoising is None:
            zero = torch.zeros((), device=device)
            return {name + suffix: zero.clone() for suffix in suffixes for name in SET_LOSS_NAMES}
        dn_aux = dn_outputs.get("aux_outputs", [])
        if len(dn_aux) != num_aux:
            raise ValueError(f"FocusDETRCriterion: dn_outputs has {len(dn_aux)} aux layers but outputs has {num_aux}")
        indices = self.denoising_indices(targets, denoising)
        predictions = dict(zip(suffixes, [dn_outputs] + list(dn_aux)))
        return self.weighted_set_losses(predictions, targets, [indices] * len(suffixes), num_boxes * denoising.dn_num)


def matched_pairs(indices: List[Indices], target_counts: List[int]) -> List[Tensor]:
    """Per set, its per-image ``(query_idx, target_idx)`` matches -> ``(3, M)`` int64 rows ``(image, query,
    target)``, image-major, the target indexing the batch's targets concatenated image by image (``target_counts``
    per image)."""
    offsets = [0]
    for count in target_counts[:-1]:
        offsets.append(offsets[-1] + count)
    pairs, built = [], {}
    for set_indices in indices:
        if id(set_indices) not in built:  # the denoising layers share one matching
            rows = [
                torch.stack([torch.full_like(query_idx, image), query_idx, target_idx + offset])
                for image, ((query_idx, target_idx), offset) in enumerate(zip(set_indices, offsets))
            ]
            built[id(set_indices)] = torch.cat(rows, 1) if rows else torch.empty((3, 0), dtype=torch.int64)
        pairs.append(built[id(set_indices)])
    return pairs


def _to_device(tensors: List[Tensor], device) -> List[Tensor]:
    """``tensors`` on ``device`` in one copy (from the host: from pinned memory, not blocking the host, on a GPU)."""
    device = torch.device(device)
    if not tensors or all(t.device == device for t in tensors):
        return tensors
    packed = torch.cat([t.flatten().to(tensors[0].device) for t in tensors])
    if device.type == "cuda" and packed.device.type == "cpu":
        packed = packed.pin_memory()
    packed = packed.to(device, non_blocking=True)
    return [part.view(t.shape) for part, t in zip(packed.split([t.numel() for t in tensors]), tensors)]
