"""fvcore FLOP handles for the project's custom ops.

fvcore counts one fused multiply-add as one "flop" (its "GFLOPs" are GMACs); the handles here follow that convention.
The deformable-attention op runs as a single ``focus_detr::ms_deform_attn`` node in a jit trace on every backend
(the pytorch reference included, see ``focus_detr.layers.ms_deform_attn_op``), so counts do not depend on the device.
"""
from collections import Counter
from typing import Any, Dict, List

from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape

from ..layers.ms_deform_attn_op import OP_NAME

__all__ = ["MSDA_FLOP_HANDLES", "attention_products", "flop_count_analysis", "msda_flop_handle", "msda_flops",
           "register_flop_handles", "sdpa_flop_handle"]



def msda_flops(batch: int, num_queries: int, num_heads: int, num_levels: int, num_points: int, head_dim: int) -> int:
    """Multiply-adds of one MSDA call: ``5 * B * Q * H * L * P * C``.

    Per (query, head, level, point): bilinear interpolation of C channels from 4 corners (4 * C multiply-adds) plus
    the attention weighting of the sampled C-vector (C multiply-adds). The O(1) per-point work (corner coordinates
    and weights) is not counted, as fvcore does not count index arithmetic elsewhere either.
    """
    return 5 * batch * num_queries * num_heads * num_levels * num_points * head_dim


def msda_flop_handle(inputs: List[Any], outputs: List[Any]) -> Counter:
    """fvcore handle of ``focus_detr::ms_deform_attn(value (B, S, H, C), spatial_shapes, level_start_index,
    sampling_locations (B, Q, H, L, P, 2), attention_weights, backend)``; formula in :func:`msda_flops`."""
    batch, _, num_heads, head_dim = get_shape(inputs[0])
    _, num_queries, _, num_levels, num_points, _ = get_shape(inputs[3])
    return Counter({"ms_deform_attn": msda_flops(batch, num_queries, num_heads, num_levels, num_points, head_dim)})


def attention_products(query_shape, key_shape, value_shape) -> int:
    """Multiply-adds of ``QK^T`` + ``AV`` for q ``(..., Lq, d)``, k ``(..., Lk, d)``, v ``(..., Lk, dv)``:
    ``batch * Lq * Lk * (d + dv)``, ``batch`` the product of the leading dims."""
    batch = 1
    for size in query_shape[:-2]:
        batch *= size
    return batch * query_shape[-2] * key_shape[-2] * (query_shape[-1] + value_shape[-1])


def sdpa_flop_handle(inputs, outputs):
    """``aten::scaled_dot_product_attention(q, k, v)``: :func:`attention_products` multiply-adds."""
    query, key, value = (get_shape(tensor) for tensor in inputs[:3])
    return Counter({"attention": attention_products(query, key, value)})


MSDA_FLOP_HANDLES: Dict[str, Any] = {OP_NAME: msda_flop_handle}

# No multiply-adds, so fvcore should not report them as unsupported: the traced shape reads of
# ``layers.traced_shapes`` and the boolean padding masks (``mask | ~valid``).
ZERO_FLOP_OPS = ("aten::_shape_as_tensor", "aten::__or__")


def register_flop_handles(analysis):
    """Adds the project's handles (the deformable attention, the fine-grained tokens' scaled-dot-product attention,
    which fvcore has no handle for) to an fvcore (or detectron2) ``FlopCountAnalysis``; returns it."""
    return analysis.set_op_handle(**MSDA_FLOP_HANDLES, **{"aten::scaled_dot_product_attention": sdpa_flop_handle},
                                  **{name: None for name in ZERO_FLOP_OPS})


def flop_count_analysis(model, inputs) -> FlopCountAnalysis:
    """``fvcore.nn.FlopCountAnalysis(model, inputs)`` with the project's handles registered."""
    return register_flop_handles(FlopCountAnalysis(model, inputs))
