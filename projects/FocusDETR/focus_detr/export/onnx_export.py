"""ONNX export of a Focus-DETR model's inference path: one graph for every input size, for one image at a time or
(``batched=True``) for a padded batch of any size.

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
from typing import Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import ImageList
from torch import nn

from ..layers.ms_deform_attn_onnx import MSDA_ONNX_FORMS, onnx_msda_symbolic
from ..modeling import FocusDETR
from ..modeling.detections import batch_images
from ..modeling.token_layout import image_padding_masks
from .swin_tracing import traceable_backbone

__all__ = [
    "BATCHED_INPUT_NAMES",
    "BATCHED_OUTPUT_NAMES",
    "BatchedExportableFocusDETR",
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAMES",
    "ExportableFocusDETR",
    "check_graph",
    "clip_to_image",
    "export_onnx",
    "max_export_opset",
    "require_packages",
]

DEFAULT_OPSET = 17
MIN_OPSET = 16  # GridSample, the default form of the deformable attention
INPUT_NAME = "image"
# boxes (K, 4) xyxy input pixels clipped to the image, scores (K,), labels (K,) int64; then per encoder layer the
# foreground tokens it updates (J,) and its fine-grained tokens (J,), and the decoder queries (1,)
OUTPUT_NAMES = ("boxes", "scores", "labels", "encoder_token_counts", "fine_grained_token_counts", "num_queries")
# A batched graph: uint8 images (B, 3, H, W) padded bottom / right, and each one's own (height, width) (B, 2) int64.
BATCHED_INPUT_NAMES = ("images", "image_sizes")
# boxes (B, K, 4), scores (B, K), labels (B, K), nonempty (B, K) bool (the boxes clipping left a positive area: the
# image's detections), each image's foreground budget (B,); then the batch's token counts as in OUTPUT_NAMES
BATCHED_OUTPUT_NAMES = ("boxes", "scores", "labels", "nonempty", "focus_token_nums", *OUTPUT_NAMES[3:])


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
    (its scale factor is then 1): ``Boxes.clip`` then ``Boxes.nonempty``. ``boxes`` ``(..., K, 4)`` xyxy input
    pixels, ``size`` float ``[W, H, W, H]`` broadcast to them -> the boxes clipped to ``[0, W] x [0, H]``, and
    ``(..., K)`` bool: which of them keep a positive width and height (detectron2 drops the others)."""
    boxes = torch.minimum(boxes.clamp(min=0), size)
    return boxes, (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


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
        return (boxes[keep], scores[0][keep], labels[0][keep], *_token_counts(out))


def _token_counts(out) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's foreground tokens per encoder layer ``(J,)``, fine-grained tokens per layer ``(J,)`` and decoder
    queries ``(1,)`` of a transformer output, as graph values."""
    return (
        torch.cat([_length(inds, 1) for inds in out.selection.foreground_inds]),
        torch.cat([_length(inds, 1) for inds in out.fine_grained_inds]),
        _length(out.hidden_states, 2),
    )


class BatchedExportableFocusDETR(ExportableFocusDETR):
    """A FocusDETR's inference on a padded batch, with tensor inputs and outputs only.

    ``forward(images, image_sizes)``: uint8 ``(B, 3, H, W)`` images in the model's input format, already resized,
    each top-left in the batch (the rest is ignored), and their own ``(height, width)`` ``(B, 2)`` int64 (taken
    within 1 and the batch's ``H`` / ``W``) -> the tensors of :data:`BATCHED_OUTPUT_NAMES`. Padded to the largest
    image, these are ``model(batched_inputs)``'s detections: boxes in each image's pixels, clipped to it, with
    ``nonempty`` False where detectron2 drops a box.
    """

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        model = self.model
        # A size past the batch's pixels (or below 1) would scale the boxes beyond the image: each side is taken
        # within [1, the batch's side].
        image_sizes = torch.minimum(image_sizes.clamp(min=1), torch._shape_as_tensor(images)[2:])
        padding = image_padding_masks(images.shape[-2:], image_sizes, images.device)
        # what FocusDETR.preprocess_image does: normalised, then 0 where padded
        pixels = ((images.float() - model.pixel_mean) / model.pixel_std).masked_fill(padding[:, None], 0.0)
        out = model.run_transformer(ImageList(pixels, image_sizes), last_layer_only=True)
        logits, boxes = model.predict(out)
        scores, labels, boxes = model.select_detections(logits[-1], boxes[-1])
        size = image_sizes.flip(1).repeat(1, 2).float()[:, None]  # (B, 1, 4): [w, h, w, h]
        boxes, nonempty = clip_to_image(boxes * size, size)
        return (boxes, scores, labels, nonempty, out.selection.focus_token_nums.long(), *_token_counts(out))


def pad_batch(images: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(3, h_i, w_i)`` images -> a batched graph's inputs: ``(B, 3, H, W)`` padded bottom / right with 0 to
    the largest height and width (as the PyTorch model pads a batch), and their sizes ``(B, 2)`` int64."""
    batch = batch_images(list(images))
    return batch.tensor, torch.tensor(batch.image_sizes, dtype=torch.int64)


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


def _trace_inputs(sample_image: torch.Tensor, batched: bool) -> Tuple[torch.Tensor, ...]:
    """What the graph is traced on: the sample image, or for a batched graph a batch of two, the sample and a smaller
    crop of it: a batch of one would record the one-image branches (``if tokens.shape[0] == 1``) and no padding."""
    if not batched:
        return (sample_image,)
    height, width = sample_image.shape[1:]
    return pad_batch([sample_image, sample_image[:, : max(1, height * 3 // 4), : max(1, width * 3 // 4)]])


def export_onnx(
    model: FocusDETR,
    path: str,
    sample_image: torch.Tensor,
    opset: int = DEFAULT_OPSET,
    msda_form: str = "grid_sample",
    batched: bool = False,
) -> float:
    """Traces ``model`` (in eval mode, on the CPU) on ``sample_image`` (uint8 ``(3, H, W)`` torch tensor) and writes
    ``path``; height and width are dynamic. ``batched``: the graph of :class:`BatchedExportableFocusDETR` (the batch
    size is dynamic too), else :class:`ExportableFocusDETR`'s. ``opset``: an int from ``MIN_OPSET`` to
    :func:`max_export_opset`. ``model`` is left in the train / eval mode it had. Returns the export time in seconds."""
    if msda_form not in MSDA_ONNX_FORMS:
        raise ValueError(f"msda_form must be one of {MSDA_ONNX_FORMS}, got {msda_form!r}")
    opset = _checked_opset(opset)
    _check_sample_image(sample_image)
    if batched:
        wrapper = BatchedExportableFocusDETR(model)
        input_names, output_names = BATCHED_INPUT_NAMES, BATCHED_OUTPUT_NAMES
        dynamic_axes = {BATCHED_INPUT_NAMES[0]: {0: "batch", 2: "height", 3: "width"},
                        BATCHED_INPUT_NAMES[1]: {0: "batch"}, "focus_token_nums": {0: "batch"}}
        dynamic_axes.update({name: {0: "batch", 1: "num_detections"} for name in BATCHED_OUTPUT_NAMES[:4]})
    else:
        wrapper, input_names, output_names = ExportableFocusDETR(model), (INPUT_NAME,), OUTPUT_NAMES
        dynamic_axes = {INPUT_NAME: {1: "height", 2: "width"}}
        dynamic_axes.update({name: {0: "num_detections"} for name in OUTPUT_NAMES[:3]})
    start = time.perf_counter()
    with traceable_backbone(model), _eval_mode(wrapper), torch.no_grad(), onnx_msda_symbolic(opset, msda_form), \
            warnings.catch_warnings():
        # The tracer warns about every Python-side shape check it records as a constant; they are the model's fixed
        # structure (levels, heads), and the tests compare the graph with PyTorch at other sizes and batch sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper,
            _trace_inputs(sample_image.cpu(), batched),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return time.perf_counter() - start


def check_graph(path: str) -> None:
    """``onnx.checker`` on the graph file ``path``, and every node in the default ONNX domain (no plugin needed):
    RuntimeError naming the custom domains otherwise."""
    import onnx

    onnx.checker.check_model(path)
    custom = sorted({n.domain for n in onnx.load(path, load_external_data=False).graph.node} - {"", "ai.onnx"})
    if custom:
        raise RuntimeError(f"{path} has nodes in custom domains {custom}")
