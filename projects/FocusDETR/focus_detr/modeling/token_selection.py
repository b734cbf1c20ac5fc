"""What inference returns beside the detections when asked (``return_token_selection``): the foreground selector's
scores and the tokens each encoder layer kept and refined, for the batch and per image (token pictures, selection
quality against the ground truth)."""
from typing import Dict

import torch

from .transformer import TransformerOutput

__all__ = ["token_selection_of", "token_selection_tensors"]


def token_selection_tensors(out: TransformerOutput) -> Dict:
    """The selector's and encoder's token choices for a batch: ``foreground_logits`` ``(B, N)`` float32,
    ``focus_token_nums`` ``(B,)``, ``foreground_inds`` / ``fine_grained_inds`` per encoder layer ``(B, k_j)`` /
    ``(B, m_j)``, ``spatial_shapes`` ``(L, 2)`` and ``level_start_index`` ``(L,)``."""
    selection = out.selection
    return {
        "spatial_shapes": out.spatial_shapes,
        "level_start_index": out.level_start_index,
        "foreground_logits": selection.foreground_logits[..., 0].float(),  # bfloat16 under autocast
        "focus_token_nums": selection.focus_token_nums,
        "foreground_inds": list(selection.foreground_inds),
        "fine_grained_inds": list(out.fine_grained_inds),
    }


def token_selection_of(selection: Dict, index: int, focus_token_num: int) -> Dict:
    """Image ``index``'s part of :func:`token_selection_tensors`, its foreground indices cut to its
    ``focus_token_num`` kept tokens, and its fine-grained indices to those among them. In a batch, the fine-grained
    tokens are picked among the batch-wide ``k_j`` kept tokens; those beyond an image's own budget are not updated
    for it (see the encoder), so they are not its choices."""
    kept = [inds[index, :focus_token_num] for inds in selection["foreground_inds"]]
    return {
        # copies: the model reuses these per input size
        "spatial_shapes": selection["spatial_shapes"].clone(),
        "level_start_index": selection["level_start_index"].clone(),
        "foreground_logits": selection["foreground_logits"][index],
        "foreground_inds": kept,
        "fine_grained_inds": [fine[index][torch.isin(fine[index], own)]
                              for fine, own in zip(selection["fine_grained_inds"], kept)],
    }
