"""ONNX forms of multi-scale deformable attention, in standard operators only (no plugin, no custom domain).

Used at export time only (``focus_detr.export``): under ``torch.jit.trace`` every MSDA backend runs through the
custom op ``focus_detr::ms_deform_attn`` (see :mod:`focus_detr.layers.ms_deform_attn`), and
:func:`onnx_msda_symbolic` makes the TorchScript-based ONNX exporter write that node as one of these forms. The
PyTorch training and inference paths are untouched.

Shapes as in :mod:`focus_detr.layers.ms_deform_attn`: value ``(B, S, H, C)``, spatial_shapes ``(L, 2)`` int64,
level_start_index ``(L,)`` int64, sampling_locations ``(B, Q, H, L, P, 2)``, attention_weights ``(B, Q, H, L, P)``,
output ``(B, Q, H * C)``. S, Q and the level sizes are read from the graph's tensors, so one graph serves every
input size; H, C, L and P must be known when exporting (they are fixed by the model).

Forms:
    ``grid_sample``  one ``GridSample`` (bilinear, zero padding, align_corners=0, opset >= 16) per level, like the
                     PyTorch reference; the default (faster on onnxruntime's CPU provider, see docs/export.md);
    ``gather``       the same bilinear sampling written out: the four neighbours of every sampling point over all
                     levels at once, one ``Gather`` each from the flattened value, weighted and summed (opset >= 13).
"""
import contextlib
from typing import Iterator

import torch
from torch.onnx import symbolic_helper

from .ms_deform_attn_op import OP_NAME

__all__ = ["MSDA_ONNX_FORMS", "onnx_msda_symbolic"]

MSDA_ONNX_FORMS = ("grid_sample", "gather")
_MIN_OPSET = {"grid_sample": 16, "gather": 13}  # GridSample; ReduceSum / Unsqueeze with axes as an input
_FLOAT = 1  # onnx.TensorProto.FLOAT
_INT64 = 7  # onnx.TensorProto.INT64


def _const(g, values, dtype=torch.int64):
    return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))


def _dim(g, x, index: int):
    """``x.shape[index]`` as a ``(1,)`` int64 graph value."""
    return g.op("Gather", g.op("Shape", x), _const(g, [index]), axis_i=0)


def _static_sizes(value, sampling_locations, spatial_shapes):
    """H, C, L, P from the traced types; they are the model's constants and must be known."""
    value_sizes = symbolic_helper._get_tensor_sizes(value) or [None] * 4
    location_sizes = symbolic_helper._get_tensor_sizes(sampling_locations) or [None] * 6
    shape_sizes = symbolic_helper._get_tensor_sizes(spatial_shapes) or [None, None]
    heads, channels = value_sizes[2], value_sizes[3]
    levels, points = shape_sizes[0], location_sizes[4]
    if None in (heads, channels, levels, points):
        raise RuntimeError(
            "ONNX export of multi-scale deformable attention needs static heads, channels, levels and points; "
            f"got value {value_sizes}, sampling_locations {location_sizes}, spatial_shapes {shape_sizes}"
        )
    return heads, channels, levels, points


def _grid_sample_form(g, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    heads, channels, levels, points = _static_sizes(value, sampling_locations, spatial_shapes)
    num_values, num_queries = _dim(g, value, 1), _dim(g, sampling_locations, 1)
    mode = "linear" if g.opset >= 20 else "bilinear"  # opset 20 renamed GridSample's mode
    # (B, S, H, C) -> (B*H, C, S)
    value = g.op("Transpose", value, perm_i=[0, 2, 3, 1])
    value = g.op("Reshape", value, g.op("Concat", _const(g, [-1, channels]), num_values, axis_i=0))
    # normalised [0, 1] -> grid_sample's [-1, 1]; (B, Q, H, L, P, 2) -> (B, H, Q, L, P, 2)
    grids = g.op("Sub", g.op("Mul", sampling_locations, _const(g, 2.0, torch.float32)), _const(g, 1.0, torch.float32))
    grids = g.op("Transpose", grids, perm_i=[0, 2, 1, 3, 4, 5])
    grid_shape = g.op("Concat", _const(g, [-1]), num_queries, _const(g, [points, 2]), axis_i=0)
    level_sizes = g.op(
        "Mul",
        g.op("Gather", spatial_shapes, _const(g, 0), axis_i=1),
        g.op("Gather", spatial_shapes, _const(g, 1), axis_i=1),
    )
    # (B, Q, H, L, P) -> (B, H, Q, L, P) -> (B*H, 1, Q, L, P)
    weights = g.op("Transpose", attention_weights, perm_i=[0, 2, 1, 3, 4])
    weights = g.op(
        "Reshape", weights, g.op("Concat", _const(g, [-1, 1]), num_queries, _const(g, [levels, points]), axis_i=0)
    )
    output = None
    for level in range(levels):
        index = _const(g, [level])
        start = g.op("Gather", level_start_index, index, axis_i=0)
        end = g.op("Add", start, g.op("Gather", level_sizes, index, axis_i=0))
        height_width = g.op("Reshape", g.op("Gather", spatial_shapes, index, axis_i=0), _const(g, [2]))
        # (B*H, C, h_l, w_l)
        value_l = g.op("Slice", value, start, end, _const(g, [2]))
        value_l = g.op("Reshape", value_l, g.op("Concat", _const(g, [-1, channels]), height_width, axis_i=0))
        # (B*H, Q, P, 2)
        grid_l = g.op("Reshape", g.op("Gather", grids, _const(g, level), axis_i=3), grid_shape)
        # (B*H, C, Q, P) weighted by (B*H, 1, Q, P), summed over the points: each level is reduced on its own
        # (a concatenation of all levels' samples first costs a copy of the largest tensor here)
        sampled = g.op("GridSample", value_l, grid_l, mode_s=mode, padding_mode_s="zeros", align_corners_i=0)
        weights_l = g.op("Gather", weights, _const(g, level), axis_i=3)
        term = g.op("ReduceSum", g.op("Mul", sampled, weights_l), _const(g, [-1]), keepdims_i=0)
        output = term if output is None else g.op("Add", output, term)
    # (B*H, C, Q) -> (B, H*C, Q) -> (B, Q, H*C)
    output = g.op("Reshape", output, g.op("Concat", _const(g, [-1, heads * channels]), num_queries, axis_i=0))
    return g.op("Transpose", output, perm_i=[0, 2, 1])


def _gather_form(g, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    heads, channels, levels, points = _static_sizes(value, sampling_locations, spatial_shapes)
    num_values, num_queries = _dim(g, value, 1), _dim(g, sampling_locations, 1)
    # (B, S, H, C) -> (B, H, S, C) -> rows (B*H*S, C); row of (b, h, s) = (b*H + h)*S + s
    table = g.op("Reshape", g.op("Transpose", value, perm_i=[0, 2, 1, 3]), _const(g, [-1, channels]))
    # per-(b, h) row offsets, broadcast over (B, Q, H, L, P): (b*H + h) * S
    batch = _dim(g, value, 0)
    head_ids = g.op("Range", _const(g, 0), g.op("Mul", g.op("Squeeze", batch, _const(g, [0])), _const(g, heads)), _const(g, 1))
    head_ids = g.op("Reshape", head_ids, _const(g, [-1, 1, heads, 1, 1]))
    row_offset = g.op("Mul", head_ids, num_values)
    # level sizes, broadcast over (B, Q, H, L, P)
    level_shape = _const(g, [1, 1, 1, levels, 1])
    sizes_f = g.op("Cast", spatial_shapes, to_i=_FLOAT)
    height_f = g.op("Reshape", g.op("Gather", sizes_f, _const(g, 0), axis_i=1), level_shape)
    width_f = g.op("Reshape", g.op("Gather", sizes_f, _const(g, 1), axis_i=1), level_shape)
    width_i = g.op("Reshape", g.op("Gather", spatial_shapes, _const(g, 1), axis_i=1), level_shape)
    start = g.op("Reshape", level_start_index, level_shape)
    # pixel coordinates with centres at integers: loc * size - 0.5 (grid_sample, align_corners=False)
    half = _const(g, 0.5, torch.float32)
    x = g.op("Sub", g.op("Mul", g.op("Gather", sampling_locations, _const(g, 0), axis_i=5), width_f), half)
    y = g.op("Sub", g.op("Mul", g.op("Gather", sampling_locations, _const(g, 1), axis_i=5), height_f), half)
    x0, y0 = g.op("Floor", x), g.op("Floor", y)
    fx, fy = g.op("Sub", x, x0), g.op("Sub", y, y0)
    one = _const(g, 1.0, torch.float32)
    zero = _const(g, 0.0, torch.float32)
    output = None
    for dy, wy in ((0.0, g.op("Sub", one, fy)), (1.0, fy)):
        yi = g.op("Add", y0, _const(g, dy, torch.float32))
        inside_y = g.op("And", g.op("GreaterOrEqual", yi, zero), g.op("Less", yi, height_f))
        for dx, wx in ((0.0, g.op("Sub", one, fx)), (1.0, fx)):
            xi = g.op("Add", x0, _const(g, dx, torch.float32))
            inside = g.op("And", inside_y, g.op("And", g.op("GreaterOrEqual", xi, zero), g.op("Less", xi, width_f)))
            weight = g.op("Mul", g.op("Mul", wx, wy), attention_weights)
            weight = g.op("Where", inside, weight, zero)
            # neighbours outside the map read row 0 with weight 0
            x_index = g.op("Cast", g.op("Where", inside, xi, zero), to_i=_INT64)
            y_index = g.op("Cast", g.op("Where", inside, yi, zero), to_i=_INT64)
            rows = g.op("Add", g.op("Add", g.op("Mul", y_index, width_i), x_index), start)
            rows = g.op("Add", rows, row_offset)
            # (B, Q, H, L, P, C) * (B, Q, H, L, P, 1), summed over L and P -> (B, Q, H, C)
            gathered = g.op("Gather", table, rows, axis_i=0)
            weight = g.op("Unsqueeze", weight, _const(g, [-1]))
            term = g.op("ReduceSum", g.op("Mul", gathered, weight), _const(g, [3, 4]), keepdims_i=0)
            output = term if output is None else g.op("Add", output, term)
    return g.op("Reshape", output, g.op("Concat", _const(g, [-1]), num_queries, _const(g, [heads * channels]), axis_i=0))


_FORMS = {"grid_sample": _grid_sample_form, "gather": _gather_form}


@contextlib.contextmanager
def onnx_msda_symbolic(opset: int, form: str = "grid_sample") -> Iterator[None]:
    """While active, the TorchScript-based ``torch.onnx.export`` writes ``focus_detr::ms_deform_attn`` as ``form``.

    The exporter's symbolic registry is process-wide, so the registration is removed on exit.
    """
    if form not in _FORMS:
        raise ValueError(f"MSDA ONNX form must be one of {MSDA_ONNX_FORMS}, got {form!r}")
    if opset < _MIN_OPSET[form]:
        raise ValueError(f"the {form} form of deformable attention needs opset >= {_MIN_OPSET[form]}, got {opset}")
    build = _FORMS[form]

    def symbolic(g, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, backend):
        # ``backend`` names the eager kernel; the ONNX form replaces every backend alike.
        return build(g, value, spatial_shapes, level_start_index, sampling_locations, attention_weights)

    torch.onnx.register_custom_op_symbolic(OP_NAME, symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(OP_NAME, opset)
