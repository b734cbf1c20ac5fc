"""Activation counts of a detector: fvcore's convention (the output elements of convolutions and dot products:
linear, matmul, einsum), with the project's two attention ops added, and the ops whose outputs it does not count.

detectron2's ``activation_count_operators`` drops what fvcore skips without a word: the deformable and the
fine-grained attention (every encoder and decoder layer's) were missing from the count.
"""
from collections import Counter
from typing import Dict, List, Tuple

from detectron2.export import TracingAdapter
from fvcore.nn import activation_count
from fvcore.nn.jit_handles import generic_activation_jit

from ..layers.ms_deform_attn_op import OP_NAME
from .flop_handles import ZERO_FLOP_OPS
from .flops import NOT_COUNTED_OPS

__all__ = ["count_activations"]

# the attention ops are dot products (their output, a weighted sum of values, as a matmul's)
_ATTENTION_HANDLES = {OP_NAME: generic_activation_jit("ms_deform_attn"),
                      "aten::scaled_dot_product_attention": generic_activation_jit("attention")}
# element-wise, reduction and indexing ops: no activations by the convention, so not reported as uncounted
_NOT_COUNTED = frozenset(NOT_COUNTED_OPS) | frozenset(ZERO_FLOP_OPS) | {"aten::meshgrid"}


def count_activations(model, inputs: List[Dict]) -> Tuple[List[float], Counter]:
    """Millions of activations of ``model`` (eval mode) on each input dict (batch 1, its ``image`` alone), and the
    ops without a handle that are not element-wise, reductions or indexing (e.g. normalisations), with how often
    they ran: what the count leaves out."""
    was_training = model.training
    totals, uncounted = [], Counter()
    try:
        for single_input in inputs:
            image = single_input["image"]
            wrapper = TracingAdapter(model, [{"image": image}])
            wrapper.eval()
            counts, skipped = activation_count(wrapper, (image,), supported_ops=dict(_ATTENTION_HANDLES))
            totals.append(sum(counts.values()))
            uncounted.update({op: n for op, n in skipped.items() if op not in _NOT_COUNTED})
    finally:
        model.train(was_training)
    return totals, uncounted
