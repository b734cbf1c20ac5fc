"""Wires the Focus-DETR transformer: flattening and embeddings, foreground selection, the cascade encoder,
two-stage query selection and the DINO decoder."""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..layers.ms_deform_attn import MultiScaleDeformableAttention
from ..layers.token_rows import gather_tokens, token_rows
from ..layers.traced_shapes import capped_count
from .decoder import DINODecoder
from .denoising import DenoisingQueries
from .encoder import CascadeDualAttentionEncoder
from .foreground_selector import ForegroundSelection, ForegroundTokenSelector
from .token_layout import TokenLayout


@dataclass
class TransformerOutput:
    """Everything the heads, the losses and the analysis tools read from one transformer pass.

    Attributes:
        hidden_states: ``(D, B, P + Q, C)`` normalised outputs of the decoder's last D layers (P denoising queries
            first): every layer's, or with ``last_layer_only`` the last one's (D = 1).
        layer_boxes: ``(D, B, P + Q, 4)`` the boxes each of those layers started from (sigmoid space), which its
            prediction refines.
        encoder_logits: ``(B, Q, K)`` class logits of the selected two-stage proposals.
        encoder_boxes: ``(B, Q, 4)`` their boxes, normalised cxcywh.
        selection: the foreground selector's decisions.
        fine_grained_inds: per encoder layer ``(B, m_j)`` indices of the fine-grained tokens.
        spatial_shapes: ``(L, 2)`` int64 ``(h, w)``; level_start_index ``(L,)``.
        spatial_shapes_list: the same ``(h, w)`` as Python ints (graph values under tracing).
    """

    hidden_states: torch.Tensor
    layer_boxes: torch.Tensor
    encoder_logits: torch.Tensor
    encoder_boxes: torch.Tensor
    selection: ForegroundSelection
    fine_grained_inds: List[torch.Tensor]
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    spatial_shapes_list: List[Tuple[int, int]]


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
                f"FocusDETRTransformer: model.transformer.foreground_selector.cascade_keep_ratios has "
                f"{len(foreground_selector.cascade_keep_ratios)} entries but the encoder has {encoder.num_layers} "
                "layers (model.transformer.encoder.num_layers); give one keep ratio per encoder layer"
            )
        if foreground_selector.num_levels != num_levels:
            raise ValueError(
                f"FocusDETRTransformer: foreground_selector.num_levels is {foreground_selector.num_levels} and "
                f"num_levels {num_levels} (model.transformer.foreground_selector.num_levels and "
                "model.transformer.num_levels in the configs): give them one value, the number of feature levels"
            )
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        if not proposal_base_size > 0:  # 0 or less: every two-stage proposal is an empty box
            raise ValueError(f"proposal_base_size must be > 0 (the proposals' side, as a share of the image), got "
                             f"{proposal_base_size}")
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

    def two_stage_proposals(self, layout: TokenLayout) -> Tuple[torch.Tensor, torch.Tensor]:
        """The token proposals ``(B, N, 4)`` (inverse-sigmoid space, see
        :func:`~focus_detr.modeling.token_layout.token_proposals`) and which tokens the two-stage head ignores
        ``(B, N, 1)`` bool (padded or too close to the border)."""
        return layout.proposals, layout.proposal_ignored

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
        layout: TokenLayout,
        class_heads: Sequence[nn.Module],
        box_heads: Sequence[nn.Module],
        denoising: Optional[DenoisingQueries] = None,
        last_layer_only: bool = False,
    ) -> TransformerOutput:
        """features: per level ``(B, C, h_l, w_l)``; layout: their :class:`TokenLayout` (masks, position embeddings,
        proposals, ...). class_heads / box_heads: one per decoder layer plus a last one for the encoder (two-stage)
        proposals; the last class head also scores the encoder's fine-grained tokens. last_layer_only: the decoder
        returns its last layer's state alone (what inference reads).
        """
        if len(features) != self.num_levels:
            raise ValueError(f"FocusDETRTransformer: expected {self.num_levels} feature levels, got {len(features)}")
        tokens = torch.cat([f.flatten(2).transpose(1, 2) for f in features], 1)
        # an embedding lookup, not indexing: the same values, but its backward sums each level's gradient in a
        # fixed order, where indexing's adds them atomically from several CPU threads (runs would differ)
        pos = layout.position_embeddings + F.embedding(layout.level_ids, self.level_embeds)
        spatial_shapes, level_start_index = layout.spatial_shapes, layout.level_start_index
        valid_ratios = layout.valid_ratios
        # Nothing padded (e.g. a batch of one image): no padding mask anywhere, so the deformable attention skips the
        # (B, N, C) masking in each of its calls and, in training, their backward.
        padding_mask = layout.padding_mask if layout.any_padding else None

        proposals, ignored = self.two_stage_proposals(layout)
        selector_input = self.project_memory(tokens + pos, ignored)
        selection = self.foreground_selector(
            selector_input, padding_mask, layout.spatial_shapes_list, layout.valid_token_nums
        )
        memory, fine_grained_inds = self.encoder(
            tokens,
            pos,
            padding_mask,
            layout.reference_points,
            spatial_shapes,
            level_start_index,
            selection,
            category_head=class_heads[-1],
        )

        # Every token is ranked, but only the Q chosen ones reach a loss or an output: rank without a graph, then
        # project and score just those (a training step no longer carries the box head over all N tokens, nor the
        # backward of zeros through the other N - Q rows). Without autograd, the chosen rows are taken from the
        # ranking's own projection and logits instead (row-wise products: the same values, ~10 operators fewer).
        with torch.no_grad():
            projected = self.project_memory(memory, ignored)
            all_logits = class_heads[-1](projected)
            proposal_scores = all_logits.max(-1)[0]
        topk_inds = self.select_queries(proposal_scores)
        num_queries = topk_inds.shape[1]
        topk_rows = token_rows(topk_inds, memory.shape[1])
        if torch.is_grad_enabled():
            selected_memory = self.project_memory(gather_tokens(memory, topk_rows), gather_tokens(ignored, topk_rows))
            encoder_logits = class_heads[-1](selected_memory)
        else:
            selected_memory, encoder_logits = gather_tokens(projected, topk_rows), gather_tokens(all_logits, topk_rows)
        topk_coords = box_heads[-1](selected_memory) + gather_tokens(proposals, topk_rows)

        reference_boxes = topk_coords.detach().sigmoid()
        queries = self.tgt_embed.weight[None, :num_queries].repeat(tokens.shape[0], 1, 1)
        attn_mask = None
        if denoising is not None:
            num_dn = denoising.query_bbox.shape[1]
            reference_boxes = torch.cat([denoising.query_bbox.sigmoid(), reference_boxes], 1)
            queries = torch.cat([denoising.query_label, queries], 1)
            attn_mask = denoising.attn_mask[: num_dn + num_queries, : num_dn + num_queries]

        hidden_states, layer_boxes = self.decoder(
            queries,
            reference_boxes,
            memory,
            padding_mask,
            spatial_shapes,
            level_start_index,
            valid_ratios,
            box_heads[: self.decoder.num_layers - 1],
            attn_mask,
            last_layer_only,
        )
        return TransformerOutput(
            hidden_states=hidden_states,
            layer_boxes=layer_boxes,
            encoder_logits=encoder_logits,
            encoder_boxes=topk_coords.sigmoid(),
            selection=selection,
            fine_grained_inds=fine_grained_inds,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            spatial_shapes_list=layout.spatial_shapes_list,
        )
