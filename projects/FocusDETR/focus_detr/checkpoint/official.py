"""Reading official detrex Focus-DETR checkpoints: key renaming and the aliased shared heads."""
import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch

# official key prefix (regex) -> our key prefix
_RENAMES: List[Tuple[str, str]] = [
    (r"transformer\.alpha$", "transformer.foreground_selector.modulation_weights"),
    (r"transformer\.enc_mask_predictor\.layer1\.", "transformer.foreground_selector.predictor.projection."),
    (r"transformer\.enc_mask_predictor\.layer2\.", "transformer.foreground_selector.predictor.score_mlp."),
    (r"transformer\.encoder\.layers\.(\d+)\.attentions\.0\.attn\.", r"transformer.encoder.layers.\1.fine_grained_attn."),
    (r"transformer\.encoder\.layers\.(\d+)\.norm2\.", r"transformer.encoder.layers.\1.fine_grained_norm."),
    (r"transformer\.encoder\.layers\.(\d+)\.attentions\.1\.", r"transformer.encoder.layers.\1.cross_attn."),
    (r"transformer\.encoder\.layers\.(\d+)\.norms\.0\.", r"transformer.encoder.layers.\1.cross_attn_norm."),
    (r"transformer\.encoder\.layers\.(\d+)\.norms\.1\.", r"transformer.encoder.layers.\1.ffn_norm."),
    (r"transformer\.decoder\.layers\.(\d+)\.attentions\.0\.attn\.", r"transformer.decoder.layers.\1.self_attn."),
    (r"transformer\.decoder\.layers\.(\d+)\.attentions\.1\.", r"transformer.decoder.layers.\1.cross_attn."),
    (r"transformer\.decoder\.layers\.(\d+)\.norms\.0\.", r"transformer.decoder.layers.\1.self_attn_norm."),
    (r"transformer\.decoder\.layers\.(\d+)\.norms\.1\.", r"transformer.decoder.layers.\1.cross_attn_norm."),
    (r"transformer\.decoder\.layers\.(\d+)\.norms\.2\.", r"transformer.decoder.layers.\1.ffn_norm."),
    (r"transformer\.(encoder|decoder)\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.", r"transformer.\1.layers.\2.ffn.linear1."),
    (r"transformer\.(encoder|decoder)\.layers\.(\d+)\.ffns\.0\.layers\.1\.", r"transformer.\1.layers.\2.ffn.linear2."),
]
_RENAMES = [(re.compile("^" + pattern), replacement) for pattern, replacement in _RENAMES]

# Keys under which the official model registers the same head modules a second time.
_DECODER_HEAD_ALIAS = re.compile(r"^transformer\.decoder\.(class_embed|bbox_embed)\.(\d+)\.(.+)$")
_CATEGORY_SCORER_ALIAS = re.compile(r"^(?:transformer\.encoder\.enhance_MCSP|enhance_MCSP_layerlist)\.\d+\.(.+)$")
_OFFICIAL_MARKERS = ("transformer.enc_mask_predictor.", "transformer.alpha", ".attentions.0.attn.", ".ffns.0.")


def is_official_layout(state_dict: Dict[str, torch.Tensor]) -> bool:
    """Whether the keys follow the official detrex Focus-DETR module layout."""
    return any(marker in key for key in state_dict for marker in _OFFICIAL_MARKERS)


def to_model_keys(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state_dict`` less a ``module.`` prefix that every key has (a DDP model's, as fvcore strips it), and converted
    from the official detrex layout when it is in that layout (:func:`convert_official_state_dict`)."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
    return convert_official_state_dict(state_dict) if is_official_layout(state_dict) else state_dict


def _num_heads(state_dict: Dict[str, torch.Tensor]) -> int:
    """Heads per prediction set: decoder layers + the proposals'. Counted on the class and the box heads, since a file
    holding each shared tensor once (detrex's EMA, from ``named_parameters``) has the last class head only under an
    ``enhance_MCSP`` name."""
    indices = set()
    for key in state_dict:
        match = re.match(r"^(?:transformer\.decoder\.)?(?:class_embed|bbox_embed)\.(\d+)\.", key)
        if match:
            indices.add(int(match.group(1)))
    if not indices:
        raise ValueError("official Focus-DETR checkpoint has no class_embed.* / bbox_embed.* keys (nor "
                         "transformer.decoder.class_embed.* / bbox_embed.*)")
    return max(indices) + 1


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two copies of one tensor agree, NaN included: a diverged run's copies are NaN alike, and refusing them
    as "different values" hid the reason (its weights are not finite)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))


def convert_official_state_dict(
    state_dict: Dict[str, torch.Tensor], model_shapes: Optional[Mapping[str, torch.Size]] = None
) -> Dict[str, torch.Tensor]:
    """Maps an official detrex Focus-DETR state dict to this project's keys.

    Aliased copies of the shared heads (``transformer.decoder.{class,bbox}_embed.*``, ``enhance_MCSP*``) are folded
    into ``class_embed.*`` / ``bbox_embed.*``; any subset of the aliases is accepted, and present copies must be
    identical. Raises ``ValueError`` when they differ. With ``model_shapes`` (the model's key -> shape), an alias is
    not folded into a key absent from ``state_dict`` whose shape the model does not share: a loader that drops the
    mismatched keys first (fvcore's, for another class count) then finds it missing rather than rebuilt.
    """
    last_head = _num_heads(state_dict) - 1
    canonical: Dict[str, torch.Tensor] = {}
    aliases: List[Tuple[str, str]] = []
    for key, value in state_dict.items():
        match = _DECODER_HEAD_ALIAS.match(key)
        if match:
            aliases.append((key, f"{match.group(1)}.{match.group(2)}.{match.group(3)}"))
            continue
        match = _CATEGORY_SCORER_ALIAS.match(key)
        if match:
            aliases.append((key, f"class_embed.{last_head}.{match.group(1)}"))
            continue
        for pattern, replacement in _RENAMES:
            if pattern.match(key):
                key = pattern.sub(replacement, key)
                break
        canonical[key] = value
    for alias, target in aliases:
        value = state_dict[alias]
        if target not in canonical:
            if model_shapes is None or model_shapes.get(target, value.shape) == value.shape:
                canonical[target] = value
        elif not _same_values(canonical[target], value):
            raise ValueError(f"checkpoint keys '{alias}' and '{target}' should share one tensor but hold different values")
    return canonical
