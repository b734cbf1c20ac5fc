"""FLOP counting of a detector per module group, with the project's op handles and a complete op accounting.

fvcore's convention: one fused multiply-add = one flop (the "GFLOPs" of DETR papers are GMACs). Only ops that
multiply-add count: linear / matmul / conv / attention / normalisation / interpolation and the deformable-attention op
(handles in ``flop_handles``). Element-wise, reduction and indexing ops (``NOT_COUNTED_OPS``) are left out as in
fvcore and detrex; any other op without a handle is reported in ``unsupported_ops`` so nothing is missed silently.
Every row of the per-module table is a disjoint set of modules (one module split by call, ``SHARED_PROJECTION``) and
the "other" row holds the remainder, so rows always sum to the total.
"""
import contextlib
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch
from detectron2.utils.analysis import FlopCountAnalysis
from torch.utils.flop_counter import FlopCounterMode

from .flop_handles import attention_products, register_flop_handles

__all__ = [
    "FlopReport",
    "MODULE_GROUPS",
    "NOT_COUNTED_OPS",
    "count_flops",
    "executed_multiply_adds",
]

# table row -> module names (relative to the model); first match wins, unmatched flops go to "other"
MODULE_GROUPS = OrderedDict(
    [
        ("backbone", ["backbone"]),
        ("neck", ["neck"]),
        ("foreground selector", ["transformer.foreground_selector"]),
        ("encoder", ["transformer.encoder"]),
        ("two-stage proposals", ["transformer.enc_output", "transformer.enc_output_norm"]),
        ("decoder", ["transformer.decoder"]),
        ("heads", ["class_embed", "bbox_embed"]),
    ]
)
OTHER_ROW = "other"
# The transformer's projection runs on tokens + position as the foreground selector's input, then on the encoder's
# memory for the two-stage proposals (the same weights, as released; spec sections 2.1 and 6.1). fvcore counts by
# module, so both calls land on these names: the calls made before the selector runs move to its row, by their share
# of the projected tokens (a Linear's and a LayerNorm's multiply-adds are per token).
SHARED_PROJECTION = ("transformer.enc_output", "transformer.enc_output_norm")

# Ops with no multiply-adds worth counting under fvcore's convention (element-wise maths, reductions, comparisons,
# indexing and tensor creation). They are silenced instead of being reported as unsupported.
NOT_COUNTED_OPS = [
    "aten::" + name
    for name in (
        "abs add add_ addcmul all any arange argmax argsort bitwise_not cat ceil chunk clamp clamp_ clamp_min clone "
        "contiguous copy_ cos cumsum detach div div_ dropout embedding empty eq exp expand expand_as fill_ flatten "
        "flip floor floor_divide full full_like gather ge gelu gt index index_copy index_copy_ index_put_ index_select "
        "inverse_sigmoid le linspace log log_sigmoid lt masked_fill masked_fill_ max maximum mean min minimum mul mul_ "
        "ne neg new_full new_ones "
        "new_zeros nonzero numel ones ones_like pad permute pow prod reciprocal relu relu_ remainder repeat "
        "repeat_interleave reshape round rsqrt rsub scatter scatter_ scatter_add_ select sigmoid sigmoid_ sin slice "
        "softmax sort split sqrt squeeze stack sub sum t tanh to topk transpose unbind unflatten unsqueeze view where "
        "zeros zeros_like _assert_async constant_pad_nd"
    ).split()
]


@dataclass
class FlopReport:
    """FLOPs (multiply-adds) averaged over the analysed inputs."""

    total: float
    per_module: Dict[str, float]
    per_operator: Dict[str, float]
    unsupported_ops: Dict[str, int] = field(default_factory=dict)
    num_inputs: int = 1


def _analysis(model, single_input):
    analysis = FlopCountAnalysis(model, [single_input])
    register_flop_handles(analysis)
    analysis.set_op_handle(**{name: None for name in NOT_COUNTED_OPS})
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


@contextlib.contextmanager
def _projection_calls(model):
    """Yields a list that collects, for each call of the model's ``transformer.enc_output`` (the first of
    ``SHARED_PROJECTION``) meanwhile, ``(tokens projected, whether the foreground selector had yet to run in that
    pass)``; stays empty for a model without them."""
    transformer = getattr(getattr(model, "module", model), "transformer", None)
    projection = getattr(transformer, "enc_output", None)
    selector = getattr(transformer, "foreground_selector", None)
    calls, selector_ran = [], [False]
    if projection is None or selector is None:
        yield calls
        return

    def pass_starts(module, args):
        selector_ran[0] = False

    def selector_runs(module, args):
        selector_ran[0] = True

    def projection_runs(module, args):
        calls.append((math.prod(int(size) for size in args[0].shape[:-1]), not selector_ran[0]))

    handles = [transformer.register_forward_pre_hook(pass_starts), selector.register_forward_pre_hook(selector_runs),
               projection.register_forward_pre_hook(projection_runs)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _group_flops(by_module, projection_calls=()):
    """Sums ``by_module`` (names prefixed with "model." by detectron2's tracing adapter) into MODULE_GROUPS rows; the
    share of ``SHARED_PROJECTION`` that ``projection_calls`` (:func:`_projection_calls`) made for the foreground
    selector moves to its row."""
    def flops_of(name):
        return by_module.get("model." + name, by_module.get(name, 0))

    rows = OrderedDict()
    for row, names in MODULE_GROUPS.items():
        rows[row] = sum(flops_of(name) for name in names)
    all_tokens = sum(tokens for tokens, _ in projection_calls)
    selector_tokens = sum(tokens for tokens, before_selector in projection_calls if before_selector)
    if selector_tokens:
        moved = sum(flops_of(name) for name in SHARED_PROJECTION) * selector_tokens / all_tokens
        rows["two-stage proposals"] -= moved
        rows["foreground selector"] += moved
    total = by_module[""]
    rows[OTHER_ROW] = total - sum(rows.values())
    return rows, total


@torch.no_grad()
def count_flops(model, inputs: List[dict]) -> FlopReport:
    """Counts FLOPs of ``model`` (eval mode) on each input dict separately (batch 1) and averages.

    Args:
        inputs: detectron2 input dicts (``image`` (3, H, W) tensor, optional ``height``/``width``).
    """
    if not inputs:
        raise ValueError("count_flops needs at least one input")
    was_training = model.training
    model.eval()
    totals, rows_sum, ops_sum, unsupported = [], Counter(), Counter(), Counter()
    try:
        for single_input in inputs:
            analysis = _analysis(model, single_input)
            with _projection_calls(model) as projection_calls:  # the model runs (is traced) at the first query
                by_module = analysis.by_module()
            rows, total = _group_flops(by_module, projection_calls)
            totals.append(total)
            rows_sum.update(rows)
            ops_sum.update(analysis.by_operator())
            unsupported.update(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    n = len(inputs)
    per_module = OrderedDict((row, rows_sum[row] / n) for row in list(MODULE_GROUPS) + [OTHER_ROW])
    return FlopReport(
        total=sum(totals) / n,
        per_module=per_module,
        per_operator={op: value / n for op, value in ops_sum.items()},
        unsupported_ops=dict(unsupported),
        num_inputs=n,
    )


# torch's counter counts flops (2 per multiply-add)
def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return 2 * attention_products(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                  **kwargs):
    # dQ, dK, dV and d(scores): twice the forward's products (a kernel that recomputes the scores does more)
    return 4 * attention_products(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels, not the CPU one that scaled_dot_product_attention runs here.
_CPU_ATTENTION_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def executed_multiply_adds(run: Callable[[], object]) -> int:
    """Multiply-adds of the convolutions, matrix products and attention that one call of ``run`` executes, backward
    passes included (``torch.utils.flop_counter`` at the dispatcher: it sees what autograd runs, which fvcore's
    traced forward cannot).

    A lower bound on the arithmetic of a run: element-wise ops, normalisations and the deformable-attention op's
    sampling are not counted. Two runs' counts compare what their dense layers must compute at the least, e.g. a
    training step against a plain ResNet-50 forward.
    """
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FORMULAS) as counter:
        run()
    return counter.get_total_flops() // 2
