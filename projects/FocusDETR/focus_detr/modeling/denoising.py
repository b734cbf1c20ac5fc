"""Contrastive denoising (DINO CDN) queries for training, and splitting their outputs off the decoder's (spec 6.5)."""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..layers.box_ops import inverse_sigmoid


@dataclass
class DenoisingQueries:
    """Denoising queries prepended to the matching queries of the decoder.

    Layout of the P = 2 * max_gt * dn_num query slots of every image: block b = 0 .. 2*dn_num-1 occupies
    ``[b*max_gt, b*max_gt + n_gt)``; even blocks hold positive (lightly noised) copies of the GT, odd blocks negative
    (strongly noised) copies. Group g = blocks (2g, 2g+1). Unused slots hold zeros.
    """

    query_label: Tensor  # (B, P, E) label embeddings of the noised GT labels (zeros in unused slots)
    query_bbox: Tensor  # (B, P, 4) inverse-sigmoid noised cxcywh boxes (zeros in unused slots)
    attn_mask: Tensor  # (P + Q, P + Q) bool decoder self-attention mask, True = blocked
    single_padding: int  # query slots per group = 2 * max_gt
    dn_num: int  # number of groups

    @property
    def num_denoising_queries(self) -> int:
        """P = single_padding * dn_num."""
        return self.single_padding * self.dn_num

    def positive_query_indices(self, num_targets: int, device=None) -> Tensor:
        """Query slots of the positive copies of an image's GT 0..num_targets-1 in every group, group-major.

        Returns (dn_num * num_targets,) int64; entry g*num_targets + j is GT j's positive query of group g.
        """
        gt_index = torch.arange(num_targets, dtype=torch.int64, device=device)
        group_start = torch.arange(self.dn_num, dtype=torch.int64, device=device) * self.single_padding
        return (group_start[:, None] + gt_index[None, :]).flatten()


def _denoising_attn_mask(pad_size: int, group_size: int, num_groups: int, num_queries: int, device) -> Tensor:
    """(pad_size + num_queries)^2 bool, True = blocked: matching queries see no dn query, dn groups see only
    themselves and the matching queries."""
    size = pad_size + num_queries
    attn_mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    attn_mask[pad_size:, :pad_size] = True
    for group in range(num_groups):
        start, end = group * group_size, (group + 1) * group_size
        attn_mask[start:end, :start] = True
        attn_mask[start:end, end:pad_size] = True
    return attn_mask


class ContrastiveDenoising(nn.Module):
    """Builds the noised GT queries of contrastive denoising. Has no parameters: the label embedding is passed in
    (it belongs to the meta-architecture, official key ``label_enc.weight``).

    Noise is drawn from the global torch RNG in the official order (label flip probabilities, new labels, box signs,
    box magnitudes) so that a given seed reproduces the official queries bit for bit.
    """

    def __init__(
        self,
        num_classes: int = 80,
        dn_number: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"ContrastiveDenoising: num_classes must be a positive int, got {num_classes}")
        if not isinstance(dn_number, int) or dn_number < 0:
            raise ValueError(f"ContrastiveDenoising: dn_number must be an int >= 0, got {dn_number}")
        if not 0 <= label_noise_ratio <= 1:
            raise ValueError(f"ContrastiveDenoising: label_noise_ratio must be in [0, 1], got {label_noise_ratio}")
        if not 0 <= box_noise_scale < float("inf"):
            raise ValueError(f"ContrastiveDenoising: box_noise_scale must be a finite number >= 0, got {box_noise_scale}")
        self.num_classes = num_classes
        self.dn_number = dn_number
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dn_number={self.dn_number}, "
            f"label_noise_ratio={self.label_noise_ratio}, box_noise_scale={self.box_noise_scale}"
        )

    def _noised_labels(self, labels: Tensor) -> Tensor:
        """Replace each label by a uniformly random class with probability label_noise_ratio / 2."""
        labels = labels.clone()
        if self.label_noise_ratio > 0:
            flip_prob = torch.rand_like(labels.float())
            chosen = torch.nonzero(flip_prob < (self.label_noise_ratio * 0.5)).view(-1)
            new_labels = torch.randint_like(chosen, 0, self.num_classes)
            labels.scatter_(0, chosen, new_labels)
        return labels

    def _noised_boxes(self, boxes: Tensor, negative_rows: Tensor) -> Tensor:
        """Jitter every box corner by up to half the box size (positives, factor in [0, 1)) or between one half and
        one full box size (negatives, factor in [1, 2)), times box_noise_scale; boxes (M, 4) cxcywh -> (M, 4)."""
        if self.box_noise_scale <= 0:
            return boxes.clone()
        corners = torch.zeros_like(boxes)
        corners[:, :2] = boxes[:, :2] - boxes[:, 2:] / 2
        corners[:, 2:] = boxes[:, :2] + boxes[:, 2:] / 2
        half_size = torch.zeros_like(boxes)
        half_size[:, :2] = boxes[:, 2:] / 2
        half_size[:, 2:] = boxes[:, 2:] / 2
        sign = torch.randint_like(boxes, low=0, high=2, dtype=torch.float32) * 2.0 - 1.0
        magnitude = torch.rand_like(boxes)
        magnitude[negative_rows] += 1.0
        magnitude *= sign
        corners = corners + torch.mul(magnitude, half_size) * self.box_noise_scale
        corners = corners.clamp(min=0.0, max=1.0)
        noised = torch.zeros_like(boxes)
        noised[:, :2] = (corners[:, :2] + corners[:, 2:]) / 2
        noised[:, 2:] = corners[:, 2:] - corners[:, :2]
        return noised

    def forward(
        self, targets: List[Dict[str, Tensor]], label_enc: nn.Embedding, num_queries: int
    ) -> Optional[DenoisingQueries]:
        """
        Args:
            targets: B dicts with "labels" (n,) int64 and "boxes" (n, 4) normalised cxcywh.
            label_enc: embedding (num_classes, E) of class labels.
            num_queries: Q, the number of matching queries that follow the denoising ones.
        Returns:
            DenoisingQueries, or None when dn_number == 0 or no image has a GT.
        """
        if self.dn_number == 0 or len(targets) == 0:
            return None
        if label_enc.num_embeddings < self.num_classes:
            raise ValueError(
                f"ContrastiveDenoising: label_enc has {label_enc.num_embeddings} rows, "
                f"fewer than num_classes={self.num_classes}"
            )
        counts = [int(t["labels"].numel()) for t in targets]
        max_gt = max(counts)
        if max_gt == 0:
            return None
        num_groups = max(self.dn_number * 2 // (max_gt * 2), 1)
        num_blocks = 2 * num_groups

        labels = torch.cat([t["labels"] for t in targets])
        boxes = torch.cat([t["boxes"] for t in targets])
        device = boxes.device
        image_index = torch.cat([torch.full_like(t["labels"].long(), b) for b, t in enumerate(targets)]).to(device)
        num_total = labels.numel()

        # block-major copies: row r*num_total + i is GT i (batch-concatenated) in block r
        block_labels = labels.repeat(num_blocks, 1).view(-1)
        block_image_index = image_index.repeat(num_blocks, 1).view(-1)
        block_boxes = boxes.repeat(num_blocks, 1)

        noised_labels = self._noised_labels(block_labels)
        row = torch.arange(num_total, dtype=torch.int64, device=device)
        block = torch.arange(num_groups, dtype=torch.int64, device=device)
        negative_rows = (row[None, :] + block[:, None] * num_total * 2 + num_total).flatten()
        noised_boxes = self._noised_boxes(block_boxes, negative_rows)

        label_embed = label_enc(noised_labels.long().to(label_enc.weight.device)).to(device)
        bbox_unact = inverse_sigmoid(noised_boxes)

        pad_size = max_gt * num_blocks
        query_label = torch.zeros(len(targets), pad_size, label_embed.shape[-1], dtype=label_embed.dtype, device=device)
        query_bbox = torch.zeros(len(targets), pad_size, 4, dtype=bbox_unact.dtype, device=device)
        slot_in_block = torch.cat([torch.arange(n, dtype=torch.int64, device=device) for n in counts])
        slot = torch.cat([slot_in_block + max_gt * b for b in range(num_blocks)])
        query_label[block_image_index, slot] = label_embed
        query_bbox[block_image_index, slot] = bbox_unact

        attn_mask = _denoising_attn_mask(pad_size, 2 * max_gt, num_groups, num_queries, device)
        return DenoisingQueries(
            query_label=query_label,
            query_bbox=query_bbox,
            attn_mask=attn_mask,
            single_padding=2 * max_gt,
            dn_num=num_groups,
        )


def split_denoising_outputs(
    outputs_class: Tensor, outputs_coord: Tensor, denoising: Optional[DenoisingQueries]
) -> Tuple[Tensor, Tensor, Optional[dict]]:
    """Separate the denoising queries' predictions from the matching queries'.

    Args:
        outputs_class: (L, B, P + Q, K) logits of every decoder layer.
        outputs_coord: (L, B, P + Q, 4) boxes of every decoder layer.
        denoising: the queries that were prepended (None: nothing to split).
    Returns:
        matching_class (L, B, Q, K), matching_coord (L, B, Q, 4), and dn_outputs
        ``{"pred_logits": (B, P, K), "pred_boxes": (B, P, 4) of the last layer, "aux_outputs": [same for layers
        0 .. L-2]}`` (None when denoising is None).
    """
    if denoising is None:
        return outputs_class, outputs_coord, None
    pad_size = denoising.num_denoising_queries
    if outputs_class.shape[2] < pad_size or outputs_coord.shape[2] != outputs_class.shape[2]:
        raise ValueError(
            f"split_denoising_outputs: outputs {tuple(outputs_class.shape)} / {tuple(outputs_coord.shape)} cannot "
            f"hold {pad_size} denoising queries"
        )
    dn_class, dn_coord = outputs_class[:, :, :pad_size], outputs_coord[:, :, :pad_size]
    dn_outputs = {
        "pred_logits": dn_class[-1],
        "pred_boxes": dn_coord[-1],
        "aux_outputs": [{"pred_logits": c, "pred_boxes": b} for c, b in zip(dn_class[:-1], dn_coord[:-1])],
    }
    return outputs_class[:, :, pad_size:], outputs_coord[:, :, pad_size:], dn_outputs
