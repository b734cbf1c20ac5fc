"""ONNX export of a Focus-DETR model's inference path: one graph for every input size, batch 1.

The graph is traced with the TorchScript-based exporter (``torch.onnx.export(dynamo=False)``): the token counts
that depend on the image size (foreground budget, per-layer cascade counts, fine-grained count, query count) are
tensor values during tracing and become graph computations feeding ``TopK``'s k. The dynamo exporter
(``torch.export``) turns them into data-dependent symbolic ints and stops at the first one
(``GuardOnDataDependentSymNode``). A Swin backbone is traced as :class:`~focus_detr.export.swin_tracing.TraceableSwin`
(detectron2's turns its window sizes into Python numbers). Deformable attention is written in standard operators by
:func:`focus_detr.layers.ms_deform_attn_onnx.onnx_msda_symbolic`.
"""
import contextlib
import importlib.util
import numbers
import time
import warnings
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..layers.ms_deform_attn_onnx import MSDA_ONNX_FORMS, onnx_msda_symbolic
from ..modeling import FocusDETR
from .swin_tracing import traceable_backbone

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAMES",
    "ExportableFocusDETR",
    "clip_to_image",
    "export_onnx",
    "export_metadata",
    "max_export_opset",
    "require_packages",
]

DEFAULT_OPSET = 17
MIN_OPSET = 16  # GridSample, the default form of the deformable attention
INPUT_NAME = "image"
# boxes (K, 4) xyxy input pixels clipped to the image, scores (K,), labels (K,) int64; then per encoder layer the
# foreground tokens it updates (J,) and its fine-grained tokens (J,), and the decoder queries (1,)
OUTPUT_NAMES = ("boxes", "scores", "labels", "encoder_token_counts", "fine_grained_token_counts", "num_queries")


def require_packages(*names: str) -> None:
    """One line naming those of ``names`` (``onnx``, ``onnxruntime``) that are not installed."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"{' and '.join(missing)} not installed: ONNX export and onnxruntime inference need "
            "requirements/export.txt (scripts/setup_env.sh installs it)"
        )


def max_export_opset() -> int:
    """The highest opset the installed torch writes. Past the TorchScript exporter's own limit (20 in torch 2.14) it
    warns that the opset is not fully supported and writes the older opsets' conversions, which serve this graph:
    the export is verified against PyTorch anyway. Past this one it stops deep in the exporter."""
    from torch.onnx import _constants  # torch exposes this limit nowhere public

    return _constants.ONNX_MAX_OPSET


def _length(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """``tensor.shape[dim]`` as a ``(1,)`` int64 tensor (a graph value under tracing)."""
    return torch._shape_as_tensor(tensor)[dim : dim + 1]


def clip_to_image(boxes: torch.Tensor, size: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """What ``detector_postprocess`` does to the PyTorch model's detections when the output size is the input size
    (its scale factor is then 1): ``Boxes.clip`` then ``Boxes.nonempty``. ``boxes`` ``(K, 4)`` xyxy input pixels,
    ``size`` ``(4,)`` float ``[W, H, W, H]`` -> the boxes clipped to ``[0, W] x [0, H]``, and ``(K,)`` bool: which of
    them keep a positive width and height (detectron2 drops the others)."""
    boxes = torch.minimum(boxes.clamp(min=0), size)
    return boxes, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


class ExportableFocusDETR(nn.Module):
    """A FocusDETR's inference on one image, with tensor inputs and outputs only.

    ``forward(image)``: uint8 ``(3, H, W)`` in the model's input format, already resized (what detectron2's
    ``DefaultPredictor`` passes to the model) -> the tensors of :data:`OUTPUT_NAMES`: the model's detections in
    input pixels, exactly as ``model([{"image": image}])`` post-processes them (see :func:`clip_to_image`), and the
    token counts its encoder and decoder used.
    """

    def __init__(self, model: FocusDETR):
        super().__init__()
        if not isinstance(model, FocusDETR):
            raise ValueError(f"ONNX export supports FocusDETR models, got {type(model).__name__}")
        self.model = model

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        model = self.model
        images = model.preprocess_image([{"image": image}])
        out = model.run_transformer(images, last_layer_only=True)
        logits, boxes = model.predict(out)
        scores, labels, boxes = model.select_detections(logits[-1], boxes[-1])
        height, width = _length(image, 1).float(), _length(image, 2).float()
        size = torch.cat([width, height, width, height])
        boxes, keep = clip_to_image(boxes[0] * size, size)
        return (
            boxes[keep],
            scores[0][keep],
            labels[0][keep],
            torch.cat([_length(inds, 1) for inds in out.selection.foreground_inds]),
            torch.cat([_length(inds, 1) for inds in out.fine_grained_inds]),
            _length(out.hidden_states, 2),
        )


def _checked_opset(opset) -> int:
    """``opset`` as an int; TypeError / ValueError (one line) unless it is an integer the installed torch exports.
    Unchecked, "17" failed comparing str and int, and 17.0 deep in the exporter."""
    if not isinstance(opset, numbers.Integral) or isinstance(opset, bool):
        raise TypeError(f"opset must be an int (the ONNX opset version, e.g. {DEFAULT_OPSET}), got "
                        f"{type(opset).__name__} {opset!r}")
    if opset > max_export_opset():
        raise ValueError(f"opset {opset} is above {max_export_opset()}, the highest torch {torch.__version__} exports")
    return int(opset)


def _check_sample_image(sample_image) -> None:
    """TypeError / ValueError (one line) unless ``sample_image`` is a uint8 ``(3, H, W)`` torch tensor; another type
    is named (a numpy array of the right dtype and shape read as a contradiction)."""
    if not isinstance(sample_image, torch.Tensor):
        kind = "a numpy array" if isinstance(sample_image, np.ndarray) else type(sample_image).__name__
        hint = " (torch.from_numpy converts it)" if isinstance(sample_image, np.ndarray) else ""
        raise TypeError(f"sample_image must be a uint8 (3, H, W) torch tensor, got {kind}{hint}")
    if sample_image.dtype != torch.uint8 or sample_image.dim() != 3 or sample_image.shape[0] != 3:
        raise ValueError(f"sample_image must be a uint8 (3, H, W) tensor, got {sample_image.dtype} "
                         f"{tuple(sample_image.shape)}")


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    """``module`` in eval mode inside; afterwards every submodule has its own mode again (a training model with
    frozen, eval-mode parts stays so), also when the export fails: the caller's model may go on training."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in modes:
            submodule.training = training


def export_onnx(
    model: FocusDETR,
    path: str,
    sample_image: torch.Tensor,
    opset: int = DEFAULT_OPSET,
    msda_form: str = "grid_sample",
) -> float:
    """Traces ``model`` (in eval mode, on the CPU) on ``sample_image`` (uint8 ``(3, H, W)`` torch tensor) and writes
    ``path``; height and width are dynamic. ``opset``: an int from ``MIN_OPSET`` to :func:`max_export_opset`.
    ``model`` is left in the train / eval mode it had. Returns the export time in seconds."""
    if msda_form not in MSDA_ONNX_FORMS:
        raise ValueError(f"msda_form must be one of {MSDA_ONNX_FORMS}, got {msda_form!r}")
    opset = _checked_opset(opset)
    _check_sample_image(sample_image)
    wrapper = ExportableFocusDETR(model)
    dynamic_axes = {INPUT_NAME: {1: "height", 2: "width"}}
    for name in OUTPUT_NAMES[:3]:
        dynamic_axes[name] = {0: "num_detections"}
    start = time.perf_counter()
    with traceable_backbone(model), _eval_mode(wrapper), torch.no_grad(), onnx_msda_symbolic(opset, msda_form), \
            warnings.catch_warnings():
        # The tracer warns about every Python-side shape check it records as a constant; they are the model's fixed
        # structure (levels, heads, batch 1), and the tests compare the graph with PyTorch at other sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper,
            (sample_image.cpu(),),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return time.perf_counter() - start


def export_metadata(
    model: FocusDETR,
    opset: int,
    msda_form: str,
    input_format: str = "RGB",
    class_names: Optional[Sequence[str]] = None,
) -> Dict:
    """What a runtime needs besides the graph (written as ``model.json`` next to ``model.onnx``)."""
    import onnx

    selector = model.transformer.foreground_selector
    return {
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "shape": ["3", "height", "width"],
            "format": input_format,
            "note": "already resized like the test loader; the graph normalises it",
        },
        "outputs": list(OUTPUT_NAMES),
        "batch_size": 1,
        "pixel_mean": model.pixel_mean.flatten().tolist(),
        "pixel_std": model.pixel_std.flatten().tolist(),
        "num_classes": model.num_classes,
        "class_names": list(class_names) if class_names else None,
        "num_detections": model.num_detections,
        "keep_ratio": selector.keep_ratio,
        "cascade_keep_ratios": list(selector.cascade_keep_ratios),
        "opset": opset,
        "msda_form": msda_form,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
    }
