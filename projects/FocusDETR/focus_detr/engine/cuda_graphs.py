"""Inference replayed from CUDA graphs: one graph per input signature instead of over a thousand launches a call.

On a GPU, eager inference is bound by the host: launching the network's kernels takes longer than running them
(docs/gpu.md). Everything :meth:`FocusDETR.detect` does -- padded pixels to the top detections -- has shapes fixed
by the image sizes (token counts come from host ints, top-k sizes are constants) and reads nothing back from the
device (``tools/benchmark.py --count-dispatch``: the one read per inference is the count of non-empty boxes, after
it). So it is captured once per signature (batch and padded size, image sizes, autocast, TF32 settings, whether
the token selection is returned) and replayed; preprocessing (normalise, pad) and the conversion of detections to ``Instances`` stay eager around it.

Safety: a graph is only used after its first replay gave bitwise the detections of an eager run of the same input;
a signature whose capture fails or differs runs eagerly from then on (one warning). The graph keeps every tensor it
reads from outside its own memory (weights, cached layouts, folded batch norms, autocast's casts of the weights)
alive, and all graphs are dropped when a parameter or buffer of the model changes, since those derived tensors are
read by address.
"""
import collections
import logging
import threading
from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.structures import ImageList
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..analysis.dispatch_counts import tensors_in
from .config import ConfigError

__all__ = ["CUDAGraphInference", "OutsideTensors", "graphs_available", "graphs_supported", "inference_cuda_graphs"]

logger = logging.getLogger(__name__)


class OutsideTensors(TorchDispatchMode):
    """Collects, inside the ``with`` block, every tensor an operator reads that no operator of the block wrote:
    what a CUDA graph captured in the block reads by address after the block ends (weights, caches, inputs).

    Attributes:
        tensors: those tensors, one per storage (views count as their base's storage).
    """

    def __init__(self):
        super().__init__()
        self.tensors: List[torch.Tensor] = []
        self._inside = set()  # storages the block's operators returned
        self._outside = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for tensor in tensors_in((args, kwargs)):
            storage = _storage_key(tensor)
            if storage is not None and storage not in self._inside and storage not in self._outside:
                self._outside.add(storage)
                self.tensors.append(tensor)
        out = func(*args, **kwargs)
        for tensor in tensors_in(out):
            storage = _storage_key(tensor)
            if storage is not None and storage not in self._outside:
                self._inside.add(storage)
        return out


def _cloned(tree):
    """``tree`` with each tensor cloned: the next replay overwrites a graph's outputs, and callers scale the boxes in
    place."""
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cloned(item) for item in tree)
    if isinstance(tree, dict):
        return {name: _cloned(item) for name, item in tree.items()}
    return tree


def _storage_key(tensor: torch.Tensor):
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, ...)
        return None
    return (tensor.device, storage.data_ptr())


# What CUDAGraphInference calls on the model: the eager ends and the capturable middle of an inference.
_MODEL_METHODS = ("preprocess_image", "detect", "detection_outputs", "forward_inference")


class _Captured:
    """One signature's graph: ``replay()`` refreshes ``outputs`` from ``static_pixels``; ``held`` keeps alive what
    it reads from outside its memory pool."""

    def __init__(self, replay: Callable[[], None], static_pixels, outputs, held):
        self.replay = replay
        self.static_pixels = static_pixels
        self.outputs = outputs
        self.held = held


class CUDAGraphInference(nn.Module):
    """``model`` for inference, with :meth:`FocusDETR.detect` replayed from a CUDA graph per input signature.

    Called like the model (``graphed(batched_inputs) -> [{"instances": Instances}]``, also ``forward_inference(...,
    return_token_selection=True)``) and returns the same outputs, bitwise. In training mode, and on a device other
    than CUDA, it calls the model as is.

    The first ``capture_after`` calls at a signature run eagerly (they also fill the model's per-size caches); the
    next one captures it (a warm-up run, the capture, a check replay: about three inferences) and later ones replay.
    Images whose sizes never repeat, as in a dataset of mixed sizes, therefore cost nothing extra; frames of a video,
    or images resized to one size, run from the graph.

    Args:
        model: a :class:`~focus_detr.modeling.FocusDETR` (``preprocess_image``, ``detect``, ``detection_outputs``,
            ``forward_inference``).
        max_graphs: signatures kept captured, least recently used first out. Each graph holds its own memory pool,
            about one eager inference's peak at that size.
        capture_after: eager calls at a signature before it is captured (>= 1).
    """

    def __init__(self, model: nn.Module, max_graphs: int = 4, capture_after: int = 1):
        super().__init__()
        if not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs must be an integer >= 1, got {max_graphs!r}")
        if not isinstance(capture_after, int) or capture_after < 1:
            raise ValueError(f"capture_after must be an integer >= 1, got {capture_after!r}")
        if not graphs_supported(model):
            raise TypeError(f"CUDAGraphInference needs a model with {', '.join(_MODEL_METHODS)} (FocusDETR); "
                            f"{type(model).__name__} has not")
        self.model = model
        self.training = model.training  # restored onto the model by inference_on_dataset: it must be the model's
        self.max_graphs = max_graphs
        self.capture_after = capture_after
        self._graphs: "collections.OrderedDict[tuple, _Captured]" = collections.OrderedDict()
        self._calls: "collections.OrderedDict[tuple, Optional[int]]" = collections.OrderedDict()  # not captured
        self._model_tensors = _ModelTensors(model)
        self._model_state = None
        self._stream = None
        self._lock = threading.Lock()  # one static input per graph: replays must not interleave
        self.counts = collections.Counter()  # "replayed", "eager", "captured", "not_captured"

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        if self.model.training:
            return self.model(batched_inputs)
        getattr(self.model, "warn_of_mixed_sizes", lambda inputs: None)(batched_inputs)  # as model() does
        return self.forward_inference(batched_inputs)

    @torch.no_grad()
    def forward_inference(self, batched_inputs: List[Dict], return_token_selection: bool = False) -> List[Dict]:
        """The model's ``forward_inference``, its network replayed from a graph where one is captured."""
        model = self.model
        if model.training or not graphs_available(model.device):
            return model.forward_inference(batched_inputs, return_token_selection)
        images = model.preprocess_image(batched_inputs)
        with self._lock:
            outputs = self._detect(images, return_token_selection)
        return model.detection_outputs(outputs, images, batched_inputs)

    def reset(self) -> None:
        """Drops every graph (and its memory pool) and the call counts."""
        self._graphs.clear()
        self._calls.clear()

    # ------------------------------------------------------------------------------------------------ internals
    def _detect(self, images: ImageList, return_token_selection: bool):
        state = self._model_tensors.state()
        if state != self._model_state:
            self.reset()  # a derived cache (folded weights, autocast casts) the graphs read may be stale
            self._model_state = state
        key = (*_signature(images), return_token_selection)
        entry = self._graphs.get(key)
        if entry is not None:
            self._graphs.move_to_end(key)
            entry.static_pixels.copy_(images.tensor)
            entry.replay()
            self.counts["replayed"] += 1
            return _cloned(entry.outputs)
        calls = self._calls.pop(key, 0)  # None: a signature that failed to capture
        calls = None if calls is None else calls + 1
        self._calls[key] = calls  # last = most recent
        while len(self._calls) > 64 * self.max_graphs:
            self._calls.popitem(last=False)
        if calls is None or calls <= self.capture_after:
            self.counts["eager"] += 1
            return self.model.detect(images, return_token_selection)
        entry = self._capture(key, images, return_token_selection)
        if entry is None:
            self._calls[key] = None
            self.counts["not_captured"] += 1
            self.counts["eager"] += 1
            return self.model.detect(images, return_token_selection)
        del self._calls[key]
        self._graphs[key] = entry
        if len(self._graphs) > self.max_graphs:
            dropped, _ = self._graphs.popitem(last=False)
            self._calls[dropped] = self.capture_after  # it did repeat: captured again when it comes back
        self.counts["captured"] += 1
        return _cloned(entry.outputs)  # the check replay ran on these images

    def _capture(self, key, images: ImageList, return_token_selection: bool):
        """A checked :class:`_Captured` for ``images``' signature, or None (with a warning) when it cannot be."""
        static_pixels = images.tensor.clone()
        static_images = ImageList(static_pixels, images.image_sizes)
        try:
            replay, outputs, expected, held = self._capture_graph(
                lambda: self.model.detect(static_images, return_token_selection)
            )
            replay()
            outputs_flat, expected_flat = list(tensors_in(outputs)), list(tensors_in(expected))
            same = len(outputs_flat) == len(expected_flat) and all(
                torch.equal(a, b) for a, b in zip(outputs_flat, expected_flat)
            )
        except Exception as error:  # a failed capture leaves eager inference working: fall back to it
            message = str(error).strip().splitlines()
            logger.warning(f"CUDA graph capture failed for input {_describe(key)} ({type(error).__name__}"
                           f"{': ' + message[0] if message else ''}); it runs eagerly")
            return None
        if not same:
            logger.warning(f"The CUDA graph for input {_describe(key)} replayed other detections than eager "
                           "inference; it runs eagerly")
            return None
        return _Captured(replay, static_pixels, outputs, held)

    def _capture_graph(self, detect: Callable[[], Tuple]):
        """Captures ``detect`` -> ``(replay, outputs, expected, held)``: ``expected`` from an eager warm-up run on
        the capture stream (lazy initialisations such as cuBLAS handles happen per stream, and must not happen
        during the capture), ``outputs`` the graph's outputs (nested as ``detect`` returns them), ``held`` what the
        graph reads from outside its memory pool."""
        device = self.model.device
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        stream, caller = self._stream, torch.cuda.current_stream(device)
        graph = torch.cuda.CUDAGraph()
        stream.wait_stream(caller)
        # the model's GPU current throughout: on a machine with several, work must not land on another
        with torch.cuda.device(device), torch.cuda.stream(stream):
            # Under autocast (its weight-cast cache on, the default), the warm-up casts the weights and the graph
            # reads those casts (held below) instead of recording ~600 cast kernels to replay on every call.
            expected = detect()
            # thread_local: a data loader's pinning thread may allocate while this thread captures
            with OutsideTensors() as outside, torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                outputs = detect()
        caller.wait_stream(stream)
        return graph.replay, outputs, expected, outside.tensors


def inference_cuda_graphs(cfg) -> Optional[Dict]:
    """``train.inference_cuda_graphs`` of ``cfg`` -> :class:`CUDAGraphInference`'s keyword arguments, or None when
    it is off or absent; ConfigError (one line) on other values."""
    settings = (cfg.get("train", None) or {}).get("inference_cuda_graphs", None) or {}
    enabled, max_graphs = settings.get("enabled", False), settings.get("max_graphs", 4)
    if not isinstance(enabled, bool):
        raise ConfigError(f"train.inference_cuda_graphs.enabled must be True or False, got {enabled!r}")
    if not isinstance(max_graphs, int) or isinstance(max_graphs, bool) or max_graphs < 1:
        raise ConfigError(f"train.inference_cuda_graphs.max_graphs must be an integer >= 1, got {max_graphs!r}")
    unknown = sorted(set(settings) - {"enabled", "max_graphs"})
    if unknown:
        raise ConfigError(f"train.inference_cuda_graphs has unknown keys {unknown}; it takes enabled, max_graphs")
    return {"max_graphs": max_graphs} if enabled else None


def graphs_supported(model: nn.Module) -> bool:
    """Whether ``model`` splits its inference as :class:`CUDAGraphInference` needs (FocusDETR does)."""
    return all(callable(getattr(model, name, None)) for name in _MODEL_METHODS)


def graphs_available(device) -> bool:
    """Whether inference on ``device`` (a torch device or its name) can be replayed from CUDA graphs."""
    return torch.device(device).type == "cuda"


def _signature(images: ImageList) -> tuple:
    """What a graph is specific to: shapes and dtype of the padded batch, each image's size, the autocast dtype and
    the kernels' precision settings."""
    pixels = images.tensor
    device_type = pixels.device.type
    autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    return (
        tuple(pixels.shape), pixels.dtype, pixels.device,
        tuple((int(h), int(w)) for h, w in images.image_sizes),
        autocast,
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )


def _describe(key: tuple) -> str:
    shape, _, _, sizes, autocast = key[:5]
    return f"{'x'.join(map(str, shape))} (image sizes {list(sizes)}, autocast {autocast})"


class _ModelTensors:
    """A model's parameters and buffers, listed again only after a module somewhere registered new ones (listing
    them walks every submodule: ~1 ms for R50, where checking their versions takes ~0.1 ms)."""

    _registrations = 0
    _hooks = None

    def __init__(self, model: nn.Module):
        if _ModelTensors._hooks is None:
            _ModelTensors._hooks = [
                register(_ModelTensors._registered)
                for register in (
                    nn.modules.module.register_module_parameter_registration_hook,
                    nn.modules.module.register_module_buffer_registration_hook,
                    nn.modules.module.register_module_module_registration_hook,
                )
            ]
        self.model = model
        self._listed_at = None
        self._tensors = ()

    @staticmethod
    def _registered(*args):
        _ModelTensors._registrations += 1

    def state(self) -> tuple:
        """Where each parameter and buffer lives and its in-place version counter: a change means new weights."""
        if self._listed_at != _ModelTensors._registrations:
            self._tensors = (*self.model.parameters(), *self.model.buffers())
            self._listed_at = _ModelTensors._registrations
        return tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in self._tensors)
