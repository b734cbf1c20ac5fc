"""Wires the Focus-DETR transformer: flattening and embeddings, foreground selection, the cascade encoder,
two-stage query selection and the DINO decoder."""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..layers.ms_deform_attn import MultiScaleDeformableAttention
from ..layers.traced_shapes import capped_count, spatial_shapes_of
from .decoder import DINODecoder
from .denoising import DenoisingQueries
from .encoder import CascadeDualAttentionEncoder
from .foreground_selector import ForegroundSelection, ForegroundTokenSelector


@dataclass
class TransformerOutput:
    """Everything the heads, the losses and the analysis tools read from one transformer pass.

    Attributes:
        hidden_states: ``(num_decoder_layers, B, P + Q, C)`` normalised decoder outputs (P denoising queries first).
        initial_boxes: ``(B, P + Q, 4)`` the decoder's input reference boxes (sigmoid space).
        refined_boxes: ``(num_decoder_layers, B, P + Q, 4)`` each layer's refined boxes.
        encoder_logits: ``(B, Q, K)`` class logits of the selected two-stage proposals.
        encoder_boxes: ``(B, Q, 4)`` their boxes, normalised cxcywh.
        selection: the foreground selector's decisions.
        fine_grained_inds: per encoder layer ``(B, m_j)`` indices of the fine-grained tokens.
        spatial_shapes: ``(L, 2)`` int64 ``(h, w)``; level_start_index ``(L,)``.
    """

    hidden_states: torch.Tensor
    initial_boxes: torch.Tensor
    refined_boxes: torch.Tensor
    encoder_logits: torch.Tensor
    encoder_boxes: torch.Tensor
    selection: ForegroundSelection
    fine_grained_inds: List[torch.Tensor]
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor


def valid_extent(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """mask ``(B, h, w)`` True = padding (images are top-left aligned) -> valid rows ``(B,)`` and columns ``(B,)``."""
    return (~mask[:, :, 0]).sum(1), (~mask[:, 0, :]).sum(1)


def valid_ratios_of(mask: torch.Tensor) -> torch.Tensor:
    """mask ``(B, h, w)`` True = padding -> ``(B, 2)`` valid fraction ``(w, h)`` of the level."""
    _, h, w = mask.shape
    valid_h, valid_w = valid_extent(mask)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)


def encoder_reference_points(spatial_shapes: Sequence[Tuple[int, int]], valid_ratios: torch.Tensor) -> torch.Tensor:
    """Pixel centres of every token, normalised by the valid extent -> ``(B, N, L, 2)`` (x, y) per level."""
    points = []
    for level, (h, w) in enumerate(spatial_shapes):
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=valid_ratios.device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=valid_ratios.device),
            indexing="ij",
        )
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * w)
        points.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]


def token_proposals(
    padding_mask: torch.Tensor, spatial_shapes: Sequence[Tuple[int, int]], base_size: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One box per token centred on it, ``base_size * 2**level`` wide, in inverse-sigmoid space.

    padding_mask ``(B, N)``. Returns proposals ``(B, N, 4)`` (+inf where padded or too close to the border) and
    the validity ``(B, N, 1)`` bool.
    """
    batch_size = padding_mask.shape[0]
    proposals, start = [], 0
    for level, (h, w) in enumerate(spatial_shapes):
        valid_h, valid_w = valid_extent(padding_mask[:, start : start + h * w].view(batch_size, h, w))
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, h - 1, h, dtype=torch.float32, device=padding_mask.device),
            torch.linspace(0, w - 1, w, dtype=torch.float32, device=padding_mask.device),
            indexing="ij",
        )
        grid = torch.cat([grid_x[..., None], grid_y[..., None]], -1)
        scale = torch.cat([valid_w[:, None], valid_h[:, None]], 1).view(batch_size, 1, 1, 2)
        grid = (grid[None].expand(batch_size, -1, -1, -1) + 0.5) / scale
        size = torch.ones_like(grid) * base_size * (2.0**level)
        proposals.append(torch.cat((grid, size), -1).view(batch_size, -1, 4))
        start += h * w
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding_mask[..., None], float("inf")).masked_fill(~valid, float("inf"))
    return proposals, valid


class FocusDETRTransformer(nn.Module):
    """Focus-DETR between the neck and the prediction heads.

    Args:
        foreground_selector: a :class:`ForegroundTokenSelector`.
        encoder: a :class:`CascadeDualAttentionEncoder` with one layer per cascade keep ratio.
        decoder: a :class:`DINODecoder`.
        embed_dim: token width.
        num_levels: feature levels.
        num_queries: decoder queries chosen from the encoder proposals (fewer when the image has fewer tokens).
        proposal_base_size: width/height of a finest-level token proposal, normalised (doubles per level).
    """

    def __init__(
        self,
        foreground_selector: ForegroundTokenSelector,
        encoder: CascadeDualAttentionEncoder,
        decoder: DINODecoder,
        embed_dim: int = 256,
        num_levels: int = 4,
        num_queries: int = 900,
        proposal_base_size: float = 0.05,
    ):
        super().__init__()
        if len(foreground_selector.cascade_keep_ratios) != encoder.num_layers:
            raise ValueError(
                f"cascade_keep_ratios has {len(foreground_selector.cascade_keep_ratios)} entries but the encoder has "
                f"{encoder.num_layers} layers; give one keep ratio per encoder layer"
            )
        if foreground_selector.num_levels != num_levels:
            raise ValueError(
                f"foreground_selector.num_levels ({foreground_selector.num_levels}) != num_levels ({num_levels})"
            )
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        self.foreground_selector = foreground_selector
        self.encoder = encoder
        self.decoder = decoder
        self.embed_dim = embed_dim
        self.num_levels = num_levels
        self.num_queries = num_queries
        self.proposal_base_size = proposal_base_size
        self.level_embeds = nn.Parameter(torch.empty(num_levels, embed_dim))
        # Shared by the foreground selector's input and the two-stage proposals, as in the released weights.
        self.enc_output = nn.Linear(embed_dim, embed_dim)
        self.enc_output_norm = nn.LayerNorm(embed_dim)
        self.tgt_embed = nn.Embedding(num_queries, embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        modulation = self.foreground_selector.modulation_weights
        for p in self.parameters():
            if p.dim() > 1 and p is not modulation:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.init_weights()
        nn.init.normal_(self.level_embeds)

    def two_stage_proposals(
        self, padding_mask: torch.Tensor, spatial_shapes: Sequence[Tuple[int, int]]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """padding_mask ``(B, N)`` -> the token proposals ``(B, N, 4)`` (inverse-sigmoid space, see
        :func:`token_proposals`) and which tokens the two-stage head ignores ``(B, N, 1)`` bool (padded or too close
        to the border)."""
        proposals, valid = token_proposals(padding_mask, spatial_shapes, self.proposal_base_size)
        return proposals, padding_mask[..., None] | ~valid

    def project_memory(self, memory: torch.Tensor, ignored: torch.Tensor) -> torch.Tensor:
        """Zero the ignored tokens ``(B, N, 1)``, then Linear + LayerNorm. memory ``(B, N, C)`` -> ``(B, N, C)``."""
        return self.enc_output_norm(self.enc_output(memory.masked_fill(ignored, 0.0)))

    def select_queries(self, proposal_scores: torch.Tensor) -> torch.Tensor:
        """proposal_scores ``(B, N)`` (each token's best class logit) -> the tokens that become decoder queries
        ``(B, Q)``, best first; the rank decides which learnt content query each one gets."""
        return proposal_scores.topk(capped_count(self.num_queries, proposal_scores.shape[1]), dim=1)[1]

    def forward(
        self,
        features: List[torch.Tensor],
        masks: List[torch.Tensor],
        pos_embeds: List[torch.Tensor],
        class_heads: Sequence[nn.Module],
        box_heads: Sequence[nn.Module],
        denoising: Optional[DenoisingQueries] = None,
    ) -> TransformerOutput:
        """features, pos_embeds: per level ``(B, C, h_l, w_l)``; masks: per level ``(B, h_l, w_l)`` True = padding.
        class_heads / box_heads: one per decoder layer plus a last one for the encoder (two-stage) proposals; the
        last class head also scores the encoder's fine-grained tokens.
        """
        if len(features) != self.num_levels:
            raise ValueError(f"FocusDETRTransformer: expected {self.num_levels} feature levels, got {len(features)}")
        spatial_shapes_list = [tuple(f.shape[-2:]) for f in features]
        tokens = torch.cat([f.flatten(2).transpose(1, 2) for f in features], 1)
        padding_mask = torch.cat([m.flatten(1) for m in masks], 1)
        pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embeds[l].view(1, 1, -1) for l, p in enumerate(pos_embeds)], 1
        )
        spatial_shapes = spatial_shapes_of(features)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([valid_ratios_of(m) for m in masks], 1)

        proposals, ignored = self.two_stage_proposals(padding_mask, spatial_shapes_list)
        selector_input = self.project_memory(tokens + pos, ignored)
        selection = self.foreground_selector(selector_input, padding_mask, spatial_shapes_list)
        # Nothing padded (e.g. a batch of one image): the deformable attention has no value tokens to zero, and
        # skips the (B, N, C) masking in each of its 12 calls and, in training, their backward.
        value_padding_mask = padding_mask if torch.jit.is_tracing() or bool(padding_mask.any()) else None
        memory, fine_grained_inds = self.encoder(
            tokens,
            pos,
            value_padding_mask,
            encoder_reference_points(spatial_shapes_list, valid_ratios),
            spatial_shapes,
            level_start_index,
            selection,
            category_head=class_heads[-1],
        )

        # Every token is ranked, but only the Q chosen ones reach a loss or an output: rank without a graph, then
        # project and score just those (a training step no longer carries the box head over all N tokens, nor the
        # backward of zeros through the other N - Q rows).
        with torch.no_grad():
            proposal_scores = class_heads[-1](self.project_memory(memory, ignored)).max(-1)[0]
        topk_inds = self.select_queries(proposal_scores)
        num_queries = topk_inds.shape[1]
        selected_memory = self.project_memory(
            memory.gather(1, topk_inds[..., None].expand(-1, -1, memory.shape[-1])),
            ignored.gather(1, topk_inds[..., None]),
        )
        encoder_logits = class_heads[-1](selected_memory)
        topk_coords = box_heads[-1](selected_memory) + proposals.gather(1, topk_inds[..., None].expand(-1, -1, 4))

        reference_boxes = topk_coords.detach().sigmoid()
        queries = self.tgt_embed.weight[None, :num_queries].repeat(tokens.shape[0], 1, 1)
        attn_mask = None
        if denoising is not None:
            num_dn = denoising.query_bbox.shape[1]
            reference_boxes = torch.cat([denoising.query_bbox.sigmoid(), reference_boxes], 1)
            queries = torch.cat([denoising.query_label, queries], 1)
            attn_mask = denoising.attn_mask[: num_dn + num_queries, : num_dn + num_queries]

        hidden_states, refined_boxes = self.decoder(
            queries,
            reference_boxes,
            memory,
            value_padding_mask,
            spatial_shapes,
            level_start_index,
            valid_ratios,
            box_heads[: self.decoder.num_layers],
            attn_mask,
        )
        return TransformerOutput(
            hidden_states=hidden_states,
            initial_boxes=reference_boxes,
            refined_boxes=refined_boxes,
            encoder_logits=encoder_logits,
            encoder_boxes=topk_coords.sigmoid(),
            selection=selection,
            fine_grained_inds=fine_grained_inds,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
        )
