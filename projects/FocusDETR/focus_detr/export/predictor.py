"""Running an exported Focus-DETR graph with onnxruntime, returning detectron2 ``Instances``."""
import json
import numbers
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.data.catalog import Metadata
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..engine.predictor import model_input
from .onnx_export import (
    BATCHED_INPUT_NAMES,
    BATCHED_OUTPUT_NAMES,
    INPUT_NAME,
    OUTPUT_NAMES,
    pad_batch,
    require_packages,
)
from .metadata import check_metadata, resize_of
from .ranking import graph_with_decisions

__all__ = ["OnnxPredictor", "check_onnx_file"]


def _checked_graph_path(path) -> str:
    """``path`` (str or os.PathLike) as a str; else TypeError (one line). Unchecked, None failed in ``os.stat`` and
    an int was taken for a file descriptor."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"OnnxPredictor: path must be the model.onnx file (str or os.PathLike), got "
                        f"{type(path).__name__} {path!r}")
    return path


def _checked_num_threads(num_threads) -> Optional[int]:
    """``num_threads`` as an int when a positive integer, or None; else TypeError / ValueError (one line).
    Unchecked, a str or float failed as onnxruntime's several-line pybind TypeError, and 0 or -1 were taken silently
    (onnxruntime's default, not what was asked)."""
    if num_threads is None:
        return None
    if not isinstance(num_threads, numbers.Integral) or isinstance(num_threads, bool):
        raise TypeError(f"OnnxPredictor: num_threads must be a positive int or None (onnxruntime's default), got "
                        f"{type(num_threads).__name__} {num_threads!r}")
    if num_threads < 1:
        raise ValueError(f"OnnxPredictor: num_threads must be a positive int or None (onnxruntime's default), got "
                         f"{num_threads}")
    return int(num_threads)


def check_onnx_file(path: str) -> None:
    """Raises FileNotFoundError / ValueError (one line) unless ``path`` is a file; a folder is named as such, with the
    graph inside it that ``tools/export_model.py`` writes."""
    if os.path.isdir(path):
        inside = os.path.join(path, "model.onnx")
        hint = f" (e.g. {inside})" if os.path.isfile(inside) else ""
        raise ValueError(f"ONNX model {path} is a folder; name the .onnx file{hint}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX model not found: {path}")


def _checked_output_size(height, width) -> Tuple[Optional[int], Optional[int]]:
    """``height`` and ``width`` as ints when each is a positive integer or None (the input's own size); else
    ValueError. Unchecked, 0 silently meant the input's size, a negative size scaled every box out of the image
    (no detection left) and a string failed as a bare TypeError inside detector_postprocess."""
    for name, value in (("height", height), ("width", width)):
        if value is None:
            continue
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"OnnxPredictor: {name} must be a positive integer (the original image's, to rescale "
                             f"the boxes to) or None (the input's own), got {value!r}")
    return tuple(None if value is None else int(value) for value in (height, width))


def _check_image_list(images) -> None:
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError(f"OnnxPredictor: images must be a non-empty list of uint8 (3, H, W) images, got "
                         f"{type(images).__name__}{' (empty)' if isinstance(images, (list, tuple)) else ''}")


def _shown(value) -> str:
    """``repr(value)`` on one line, cut to a readable length (an array's repr spans lines)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def _size_pairs(sizes, name: str, count: int) -> list:
    """``sizes`` (a list or tuple of ``count`` pairs, or an ``(count, 2)`` array) as a list of pairs; else ValueError
    (one line)."""
    if isinstance(sizes, (np.ndarray, torch.Tensor)):
        sizes = sizes.tolist()
    if not isinstance(sizes, (list, tuple)) or len(sizes) != count:
        raise ValueError(f"OnnxPredictor: {name} must be one (height, width) per image ({count}), got {_shown(sizes)}")
    for size in sizes:
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise ValueError(f"OnnxPredictor: {name} must be (height, width) pairs, got {_shown(size)}")
    return list(sizes)


def _checked_output_sizes(output_sizes, num_images: int):
    """``output_sizes`` (one ``(height, width)`` per image, each side as :func:`_checked_output_size` takes it) as a
    list, or ``num_images`` times ``(None, None)`` for None; else ValueError (one line)."""
    if output_sizes is None:
        return [(None, None)] * num_images
    return [_checked_output_size(*size) for size in _size_pairs(output_sizes, "output_sizes", num_images)]


def _checked_batch_outputs(outputs, image_sizes) -> list:
    """``image_sizes`` as ``(height, width)`` int pairs, one per image of the batched graph's ``outputs``; else
    ValueError (one line)."""
    if not isinstance(outputs, dict) or "nonempty" not in outputs:
        raise ValueError("OnnxPredictor: outputs must be a batched graph's outputs by name (run_batch's)")
    sizes = _size_pairs(image_sizes, "image_sizes", len(outputs["nonempty"]))
    for size in sizes:
        if not all(isinstance(side, numbers.Integral) and not isinstance(side, bool) and side >= 1 for side in size):
            raise ValueError(f"OnnxPredictor: image_sizes must be the network inputs' (height, width), positive "
                             f"integers, got {_shown(size)}")
    return [(int(height), int(width)) for height, width in sizes]


def _image_detections(outputs: Dict[str, np.ndarray], index: int) -> Dict[str, np.ndarray]:
    """Image ``index``'s ``boxes``, ``scores`` and ``labels`` from a batched graph's outputs, without the boxes that
    clipping left empty: what a one-image graph outputs."""
    nonempty = outputs["nonempty"][index]
    return {name: outputs[name][index][nonempty] for name in OUTPUT_NAMES[:3]}


class OnnxPredictor:
    """An exported ``model.onnx`` on onnxruntime's CPU provider.

    ``predictor(image, height=None, width=None)`` takes what the PyTorch model takes as ``batched_inputs[0]``: a
    uint8 ``(3, H, W)`` image (torch tensor or numpy array) in the model's input format, already resized, and
    optionally the original ``height`` / ``width`` to rescale to (positive integers; None: the input's own size;
    anything else is a ValueError); it returns the same ``Instances`` as
    ``model([{"image": image, ...}])[0]["instances"]`` (``pred_boxes``, ``scores``, ``pred_classes``).
    :meth:`run` returns the graph's raw outputs, token counts included. A graph exported with ``batched=True``
    (``batched`` is then True) does the same, and :meth:`predict_batch` / :meth:`run_batch` run several images in
    one call, as ``model(batched_inputs)`` does.

    Args:
        path: the ``model.onnx`` written by ``tools/export_model.py`` (str or os.PathLike).
        num_threads: onnxruntime intra-op threads, a positive int (None: onnxruntime's default).
        spin_wait: let onnxruntime's threads busy-wait for the next run (its default, lowest latency when nothing
            else runs); False when other CPU work runs between calls, which the waiting threads would slow down (the
            export tool's benchmark interleaves PyTorch).
        decisions: also output the graph's ranking decisions (``query_ranking`` and the token sets of every encoder
            layer, to compare with PyTorch through near-ties, see :mod:`focus_detr.export.ranking`).
    """

    def __init__(
        self, path: Union[str, os.PathLike], num_threads: Optional[int] = None, spin_wait: bool = True,
        decisions: bool = False
    ):
        path, num_threads = _checked_graph_path(path), _checked_num_threads(num_threads)
        require_packages("onnxruntime", *(["onnx"] if decisions else []))
        import onnxruntime

        check_onnx_file(path)
        self.path = path
        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        if not spin_wait:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # A failed run is raised below as one line; onnxruntime's own log line of it would repeat it.
        self._run_options = onnxruntime.RunOptions()
        self._run_options.log_severity_level = 4
        try:
            graph, decision_outputs = graph_with_decisions(path) if decisions else (path, [])
            self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for unreadable / invalid files
            raise ValueError(f"cannot load {path} with onnxruntime: {str(error).strip().splitlines()[-1]}") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.batched = inputs == list(BATCHED_INPUT_NAMES)
        self.output_names = list(BATCHED_OUTPUT_NAMES if self.batched else OUTPUT_NAMES) + decision_outputs
        if inputs not in ([INPUT_NAME], list(BATCHED_INPUT_NAMES)) or outputs != self.output_names:
            raise ValueError(
                f"{path} is not a Focus-DETR export: inputs {inputs}, outputs {outputs} (expected [{INPUT_NAME!r}] "
                f"and {list(OUTPUT_NAMES) + decision_outputs}, or {list(BATCHED_INPUT_NAMES)} and "
                f"{list(BATCHED_OUTPUT_NAMES) + decision_outputs})"
            )
        self.metadata_path = os.path.join(os.path.dirname(path), "model.json")
        self.model_json: Dict = {}  # empty when the graph has no model.json next to it (exported elsewhere)
        if os.path.isfile(self.metadata_path):
            with open(self.metadata_path, "rb") as f:
                try:
                    self.model_json = json.load(f)
                except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
                    raise ValueError(f"{self.metadata_path} (the graph's metadata) is not readable json: {error}; "
                                     "export the graph again, or remove the file") from None
            check_metadata(self.model_json, self.metadata_path)
        self.metadata = self._classes_metadata()

    def _classes_metadata(self) -> Metadata:
        """``metadata``: detectron2's ``Metadata`` of the graph's classes (``thing_classes``, and
        ``thing_dataset_id_to_contiguous_id`` where ``model.json`` has the dataset's category ids), as
        ``DefaultPredictor.metadata`` and ``FocusDETRPredictor.metadata``: for ``Visualizer``. Empty (labels drawn
        as numbers) without ``model.json`` or class names in it. ``model_json`` holds the whole file."""
        metadata = Metadata(name=self.path)
        class_names, category_ids = self.model_json.get("class_names"), self.model_json.get("category_ids")
        if class_names:
            metadata.thing_classes = [str(name) for name in class_names]
        if class_names and category_ids and len(category_ids) == len(class_names) and all(
            isinstance(c, int) and not isinstance(c, bool) for c in category_ids
        ):
            metadata.thing_dataset_id_to_contiguous_id = {c: i for i, c in enumerate(category_ids)}
        return metadata

    @staticmethod
    def _as_array(image: Union[torch.Tensor, np.ndarray], name: str = "image") -> np.ndarray:
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        if not isinstance(image, np.ndarray):
            raise ValueError(f"OnnxPredictor: {name} must be a torch tensor or numpy array, got {type(image).__name__}")
        if image.dtype != np.uint8:
            raise ValueError(f"OnnxPredictor: {name} must be uint8 (3, H, W), got dtype {image.dtype}")
        if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] < 1 or image.shape[2] < 1:
            raise ValueError(f"OnnxPredictor: {name} must be uint8 (3, H, W), got shape {tuple(image.shape)}")
        return np.ascontiguousarray(image)

    def _session_run(self, feed: Dict[str, np.ndarray], what: str, size) -> Dict[str, np.ndarray]:
        try:
            outputs = self.session.run(None, feed, self._run_options)
        except Exception as error:  # onnxruntime's own exception types; e.g. a graph traced at one size only
            message = " ".join(str(error).split())
            raise ValueError(f"onnxruntime cannot run {self.path} on {what}: {message}"
                             f"{self._traced_size_hint(size)}") from None
        return dict(zip(self.output_names, outputs))

    def run(self, image: Union[torch.Tensor, np.ndarray]) -> Dict[str, np.ndarray]:
        """The graph's outputs by name (see ``focus_detr.export.OUTPUT_NAMES``), for a batched graph too."""
        image = self._as_array(image)
        if not self.batched:
            size = image.shape[1:]
            return self._session_run({INPUT_NAME: image}, f"a {size[0]}x{size[1]} image", size)
        outputs = self.run_batch([image])
        batch_wide = {name: outputs[name] for name in self.output_names if name not in BATCHED_OUTPUT_NAMES[:5]}
        return {**_image_detections(outputs, 0), **batch_wide}

    def run_batch(self, images: Sequence[Union[torch.Tensor, np.ndarray]]) -> Dict[str, np.ndarray]:
        """A batched graph's outputs by name (``focus_detr.export.BATCHED_OUTPUT_NAMES``) for ``images``, uint8
        ``(3, h_i, w_i)`` each, padded to the largest as the PyTorch model pads a batch."""
        if not self.batched:
            raise ValueError(f"{self.path} takes one image at a time: export it with --batched (tools/export_model.py) "
                             "to run several in one call")
        _check_image_list(images)
        arrays = [torch.from_numpy(self._as_array(image, f"images[{i}]")) for i, image in enumerate(images)]
        batch, sizes = pad_batch(arrays)
        what = f"{len(arrays)} image(s) padded to {batch.shape[2]}x{batch.shape[3]}"
        feed = {BATCHED_INPUT_NAMES[0]: batch.numpy(), BATCHED_INPUT_NAMES[1]: sizes.numpy()}
        return self._session_run(feed, what, batch.shape[2:])

    def predict_batch(
        self, images: Sequence[Union[torch.Tensor, np.ndarray]],
        output_sizes: Optional[Sequence[Tuple[Optional[int], Optional[int]]]] = None,
    ) -> List[Instances]:
        """``model([{"image": image, "height": h, "width": w}, ...])``'s ``Instances`` per image, from one run of a
        batched graph. output_sizes: one ``(height, width)`` per image to rescale to, each side a positive integer or
        None (that image's own); None: every image's own size."""
        _check_image_list(images)
        output_sizes = _checked_output_sizes(output_sizes, len(images))  # before the graph runs
        return self.batch_instances(self.run_batch(images), [tuple(image.shape[1:]) for image in images], output_sizes)

    @classmethod
    def batch_instances(
        cls, outputs: Dict[str, np.ndarray], image_sizes: Sequence[Tuple[int, int]],
        output_sizes: Optional[Sequence[Tuple[Optional[int], Optional[int]]]] = None,
    ) -> List[Instances]:
        """:meth:`run_batch`'s outputs for images of ``image_sizes`` (the network inputs' ``(height, width)``, one per
        image of the batch) as ``Instances`` per image (:meth:`instances`)."""
        image_sizes = _checked_batch_outputs(outputs, image_sizes)
        output_sizes = _checked_output_sizes(output_sizes, len(image_sizes))
        return [
            cls.instances(_image_detections(outputs, i), size, height, width)
            for i, (size, (height, width)) in enumerate(zip(image_sizes, output_sizes))
        ]

    def _traced_size_hint(self, size) -> str:
        """What to do when the graph failed at ``size`` (H, W) and model.json says it was traced at another one."""
        traced = self.model_json.get("sample_size")
        if not (isinstance(traced, list) and len(traced) == 2 and all(isinstance(v, int) for v in traced)):
            return ""
        if tuple(traced) == tuple(size):
            return ""
        return (f" (the graph was traced at {traced[0]}x{traced[1]}, its model.json says: a backbone that freezes its "
                "shapes while traced runs only at that size; export again with --sample-size "
                f"{size[0]} {size[1]}, the network-input size of your images)")

    def predict_image(self, image_bgr: np.ndarray) -> Instances:
        """One BGR uint8 ``(H, W, 3)`` image, as ``cv2.imread`` gives it, -> its ``Instances`` in its own pixels:
        resized and put in the channel order the graph was exported with (``model.json``), as the PyTorch predictor
        does, without the config."""
        resize = resize_of(self.model_json)
        if resize is None:
            raise ValueError(f"{self.metadata_path} does not say how to resize an image for {self.path} (a graph "
                             "exported before it did, or a config whose test-time resize is not one fixed "
                             "ResizeShortestEdge): export it again, or prepare the image with "
                             "focus_detr.engine.predictor.model_input and the config")
        item = model_input(image_bgr, resize, self.model_json.get("input", {}).get("format", "RGB"))
        return self(item["image"], item["height"], item["width"])

    def __call__(
        self, image: Union[torch.Tensor, np.ndarray], height: Optional[int] = None, width: Optional[int] = None
    ) -> Instances:
        _checked_output_size(height, width)  # before the graph runs
        return self.instances(self.run(image), tuple(image.shape[1:]), height, width)

    @staticmethod
    def instances(
        outputs: Dict[str, np.ndarray], image_size: Tuple[int, int], height: Optional[int] = None,
        width: Optional[int] = None
    ) -> Instances:
        """:meth:`run`'s outputs for an image of ``image_size`` (H, W) as ``Instances``, rescaled to ``height`` x
        ``width`` when given (positive integers; ValueError otherwise)."""
        height, width = _checked_output_size(height, width)
        boxes = torch.from_numpy(outputs["boxes"])
        # The graph clips to the input size; PyTorch scales to the output size first and clips there, so a clipped
        # coordinate ends on the output border exactly, where the input border times the float32 scale factor can
        # fall one rounding short. Moved past the border, detector_postprocess's clip puts it there too.
        border = torch.tensor([image_size[1], image_size[0]] * 2, dtype=boxes.dtype)
        result = Instances(image_size)
        result.pred_boxes = Boxes(torch.where(boxes == border, 2 * border, boxes))
        result.scores = torch.from_numpy(outputs["scores"])
        result.pred_classes = torch.from_numpy(outputs["labels"])
        return detector_postprocess(result, height or image_size[0], width or image_size[1])
