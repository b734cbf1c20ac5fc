"""The Python predictor, in the manner of detectron2's ``DefaultPredictor``: a BGR image (as OpenCV reads it) in,
detections in that image's own pixels out.

    from focus_detr import FocusDETRPredictor
    predictor = FocusDETRPredictor("configs/focus_detr_r18_trees.py", weights="output/main_job/model_final.pth")
    instances = predictor(cv2.imread("image.png"))["instances"]  # pred_boxes (XYXY pixels), scores, pred_classes

Each image goes through what the config's test loader does to a file (its input format, its test-time resize), so
the predictions are the ones evaluation scores. :func:`inference_resize`, :func:`input_format` and
:func:`model_input` are that preparation alone, for other runtimes (the demo's ``--onnx``).
"""
import copy
import functools
import logging
import numbers
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from omegaconf import DictConfig

from .augmentations import check_augmentations
from .config import ConfigError, apply_overrides
from .config_files import load_config
from .cuda_graphs import CUDAGraphInference, graphs_available, inference_cuda_graphs
from .test_set import metadata_of_test_set
from .precision import amp_autocast, amp_dtype_of
from .checkpoint_classes import model_classes
from .inference_weights import read_inference_weights
from .runner import build_model
from .settings import FORMAT_KEYS, RESIZE_KEYS, mapper_entry, require_sections, resolve_device

__all__ = [
    "FocusDETRPredictor",
    "check_bgr_image",
    "inference_resize",
    "input_format",
    "model_input",
    "resize_scale",
]

logger = logging.getLogger(__name__)

_DEFAULT_RESIZE = (800, 1333)  # detectron2's test-time default, for configs without a test loader
_FORMATS = ("RGB", "BGR")


def _test_mapper(cfg):
    try:
        return cfg.dataloader.test.mapper
    except (AttributeError, KeyError):
        return None


def inference_resize(cfg) -> T.AugmentationList:
    """The config's test-time augmentation (``dataloader.test.mapper.augmentation``, or ``augmentations`` for
    detectron2's ``DatasetMapper``; a ResizeShortestEdge for the DETR configs), else, for a config without a test
    loader, detectron2's default ResizeShortestEdge(800, 1333). A test mapper with neither entry is a ConfigError:
    the predictor would resize otherwise than the test loader, and find other objects."""
    mapper = _test_mapper(cfg)
    if mapper is None:
        # right for the COCO models, a silent loss for one trained at other sizes (the trees: 352..512 pixels)
        logger.warning(f"The config has no dataloader.test.mapper: images are resized as detectron2's default "
                       f"ResizeShortestEdge{_DEFAULT_RESIZE} and given to the model in RGB; a model trained at other "
                       "sizes finds less: use its training config, or add its dataloader.test")
        return T.AugmentationList([T.ResizeShortestEdge(*_DEFAULT_RESIZE)])
    key, augmentation = mapper_entry(mapper, RESIZE_KEYS)
    if key is None:
        raise ConfigError(f"dataloader.test.mapper has no {' or '.join(RESIZE_KEYS)}: the predictor cannot resize "
                          "images as the test loader does")
    check_augmentations(augmentation, f"dataloader.test.mapper.{key}")
    return T.AugmentationList([instantiate(a) for a in augmentation])


def resize_scale(resize: T.AugmentationList, height: int, width: int) -> Optional[float]:
    """The factor by which ``resize`` (:func:`inference_resize`) scales an image of ``height`` x ``width`` pixels (0.25:
    to a quarter of its side), from the sizes alone; None for a resize other than one fixed ResizeShortestEdge."""
    augmentations = getattr(resize, "augs", [])
    if len(augmentations) != 1 or not isinstance(augmentations[0], T.ResizeShortestEdge):
        return None
    resize_shortest_edge = augmentations[0]
    if len(set(resize_shortest_edge.short_edge_length)) != 1:  # a range or a choice: random sizes
        return None
    new_height, new_width = T.ResizeShortestEdge.get_output_shape(
        height, width, resize_shortest_edge.short_edge_length[0], resize_shortest_edge.max_size)
    return max(new_height, new_width) / max(height, width)


def input_format(cfg) -> str:
    """The channel order the model was trained on: the test mapper's ``img_format`` (``image_format`` for
    detectron2's ``DatasetMapper``; "RGB", our mapper's default, when absent)."""
    mapper = _test_mapper(cfg)
    key, fmt = mapper_entry(mapper, FORMAT_KEYS)
    if key is None:
        return "RGB"
    if fmt not in _FORMATS:
        raise ConfigError(f"dataloader.test.mapper.{key} is {fmt!r}; the predictor takes {' or '.join(_FORMATS)}")
    return fmt


def _conversion_hint(image) -> str:
    """How to make ``image`` (a PIL image, a path, a tensor) the array the predictor takes, or ""."""
    if isinstance(image, (str, os.PathLike)):
        return " (a file? focus_detr.data.read_image(path, 'BGR') reads it)"
    if torch.is_tensor(image):
        as_array = "tensor.permute(1, 2, 0).numpy()" if image.dim() == 3 and image.shape[0] == 3 else "tensor.numpy()"
        return f" (a tensor? pass its BGR pixels as a (H, W, 3) uint8 array, e.g. {as_array})"
    if hasattr(image, "getbands"):  # a PIL image, without importing PIL
        return " (a PIL image? np.asarray(image.convert('RGB'))[:, :, ::-1])"
    return ""


def check_bgr_image(image, name="image") -> None:
    """ValueError (one line, naming ``name``) unless ``image`` is a non-empty uint8 numpy array ``(H, W, 3)``."""
    expected = "a uint8 numpy array (H, W, 3) in BGR order"
    if image is None:  # what cv2.imread gives for a file it cannot read, without an error of its own
        raise ValueError(f"{name} must be {expected}, got None (cv2.imread returns None for a file it cannot read)")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be {expected}, got {type(image).__name__}{_conversion_hint(image)}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be {expected}, got dtype {image.dtype}")
    if image.ndim == 2:
        raise ValueError(f"{name} must be {expected}, got a (H, W) gray image {image.shape}; "
                         "give it 3 channels, e.g. cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)")
    if image.ndim != 3 or image.shape[2] != 3:
        hint = ""
        if image.ndim == 3 and image.shape[2] == 4:
            hint = " (BGRA? drop alpha with image[:, :, :3])"
        elif image.ndim == 4 and image.shape[3] == 3:
            hint = " (several images? predictor.predict_batch(list(images)))"
        raise ValueError(f"{name} must be {expected}, got shape {image.shape}{hint}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {image.shape}")


def model_input(image_bgr: np.ndarray, resize: T.AugmentationList, fmt: str = "RGB", name="image") -> Dict:
    """A BGR image ``(H, W, 3)`` -> the model's input dict: ``image`` a uint8 ``(3, h, w)`` CPU tensor in ``fmt``,
    resized by ``resize``; ``height`` / ``width`` of the original image (the predictions' coordinates). The image is
    checked first (:func:`check_bgr_image`, errors naming ``name``)."""
    if fmt not in _FORMATS:  # anything but "RGB" would silently have meant BGR
        raise ValueError(f"model_input: fmt must be {' or '.join(map(repr, _FORMATS))}, got {fmt!r}")
    check_bgr_image(image_bgr, name)
    image = image_bgr[:, :, ::-1] if fmt == "RGB" else image_bgr
    aug_input = T.AugInput(np.ascontiguousarray(image))
    try:
        resize(aug_input)
    except ValueError as error:  # PIL's "height and width must be > 0": the short side rounds to 0 pixels
        height, width = image_bgr.shape[:2]
        raise ValueError(f"{name} ({height}x{width} pixels) cannot be resized by the config's test-time resize: "
                         f"{error} (a side resized to 0 pixels: the image is too elongated, or a size of "
                         "dataloader.test.mapper's augmentation is 0)") from None
    resized = np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))
    return {"image": torch.from_numpy(resized), "height": image_bgr.shape[0], "width": image_bgr.shape[1]}


class FocusDETRPredictor:
    """A model built from a config, with its weights, in eval mode.

    ``predictor(image)`` takes one BGR uint8 ``(H, W, 3)`` numpy array and returns ``{"instances": Instances}`` with
    ``pred_boxes`` (XYXY, in the pixels of ``image``), ``scores`` and ``pred_classes``, on the predictor's device: the
    same as ``model([model_input(image, ...)])[0]``. :meth:`predict_batch` runs a list. ``trained_classes``: the
    class names the weights file records, in the order of ``pred_classes`` (None for files from before training
    recorded them, and for official detrex weights); :attr:`metadata` refuses a test set that names them otherwise.

    Args:
        config: a LazyConfig file path, or an already loaded config (copied, not changed).
        weights: a weights file (our checkpoints, weights-only files, official detrex weights; read without running
            code from it). None: the config's ``train.init_checkpoint``. With neither, the weights stay random (a
            warning says so).
        device: "auto" (a GPU when one is visible), "cpu", "cuda", "cuda:1", ...
        amp: autocast inference (bfloat16 where the device computes it, see ``train.inference_amp.precision``);
            False: float32. None: the config's ``train.inference_amp.enabled``.
        overrides: a list of ``key=value`` config overrides (``["train.seed=3"]``), checked as on the command
            line; a single string is refused with a ValueError (write it as a one-element list).
        cuda_graphs: on a CUDA device, replay the network from a CUDA graph per input size once a size repeats
            (:class:`~focus_detr.engine.cuda_graphs.CUDAGraphInference`: same detections, bitwise; each captured
            size holds about one inference's peak memory); ignored elsewhere, with a warning. None: the config's
            ``train.inference_cuda_graphs``.
    """

    def __init__(self, config, weights=None, device="auto", amp=None, overrides=(), cuda_graphs=None):
        if isinstance(config, (str, os.PathLike)):
            cfg = load_config(os.fspath(config), overrides)
        elif isinstance(config, DictConfig):
            cfg = apply_overrides(copy.deepcopy(config), overrides)
            require_sections(cfg, ("model",), "the predictor")
        else:  # a dict, a yacs CfgNode, None: deep attribute errors later
            raise ValueError(f"config must be a LazyConfig file path or a config loaded by LazyConfig.load / "
                             f"focus_detr.engine.load_config, got {type(config).__name__}")
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            raise ValueError(f"weights must be a weights file path or None (the config's train.init_checkpoint), got "
                             f"{type(weights).__name__}")
        if amp is not None and not isinstance(amp, bool):
            raise ValueError(f"amp must be True, False or None (the config's), got {amp!r}")
        if cuda_graphs is not None and not isinstance(cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True, False or None (the config's), got {cuda_graphs!r}")
        train = cfg.get("train", None) or {}
        self.cfg = cfg
        self.device = resolve_device(device, "device", "device='cpu'")
        inference_amp = train.get("inference_amp", None) or {}
        enabled = inference_amp.get("enabled", False) if amp is None else amp
        self.amp_dtype = amp_dtype_of(dict(enabled=enabled, precision=inference_amp.get("precision", "auto")),
                                      self.device, "train.inference_amp")
        self.resize = inference_resize(cfg)
        self.input_format = input_format(cfg)
        self.model = build_model(cfg, self.device)
        self.model.eval()
        weights = train.get("init_checkpoint", "") if weights is None else os.fspath(weights)
        self.weights = weights
        # the class names the checkpoint was trained on, in the order of the outputs (None: it records none)
        self.trained_classes = None
        if weights:
            self.trained_classes = read_inference_weights(self.model, cfg, weights).thing_classes
        else:
            logger.warning("FocusDETRPredictor: no weights given and train.init_checkpoint is empty: predicting with "
                           "randomly initialised weights")
        self.inference = self.model
        graph_settings = inference_cuda_graphs(cfg)
        if cuda_graphs is not None:
            graph_settings = (graph_settings or {}) if cuda_graphs else None
        if graph_settings is not None:
            if graphs_available(self.device):
                self.inference = CUDAGraphInference(self.model, **graph_settings)
            else:
                logger.warning(f"FocusDETRPredictor: cuda_graphs needs a CUDA device; inference on {self.device} runs "
                               "eagerly")

    def prepare(self, image, name="image") -> Dict:
        """One BGR image -> the model's input dict (see :func:`model_input`); ValueError naming ``name`` when the
        image is not a non-empty uint8 ``(H, W, 3)`` array."""
        return model_input(image, self.resize, self.input_format, name)

    @torch.no_grad()
    def run(self, inputs: List[Dict], **kwargs) -> List[Dict]:
        """The model on prepared inputs (one batch), under this predictor's autocast setting. ``kwargs`` go to the
        model's ``forward_inference`` (e.g. ``return_token_selection=True`` for FocusDETR)."""
        if self.model.training:  # the model then asks for ground truth: "training needs batched_inputs[0]['instances']"
            raise ValueError("FocusDETRPredictor: its model is in training mode (model.train() was called on it); "
                             "call predictor.model.eval() to predict")
        with amp_autocast(self.device, self.amp_dtype):
            if kwargs:
                return self.inference.forward_inference(inputs, **kwargs)
            return self.inference(inputs)

    def __call__(self, image) -> Dict:
        if isinstance(image, (list, tuple)):
            raise ValueError(f"FocusDETRPredictor takes one image, got a {type(image).__name__}: for several, call "
                             "predictor.predict_batch(images)")
        return self.run([self.prepare(image)])[0]

    @functools.cached_property
    def metadata(self) -> Metadata:
        """The test set's detectron2 ``Metadata`` (``thing_classes``, ...), as ``DefaultPredictor.metadata``: for
        ``Visualizer(image[:, :, ::-1], predictor.metadata)``. Read on first use (it may load the test set's json),
        after checking that it names the classes as the checkpoint records them (``trained_classes``; where it records
        none, as the config's training set does): a ValueError, one line, when it does not (the names, and the
        category ids the metadata maps them to, would be another class's). A config without a test set, or whose
        test set names no classes or cannot be read, gets the checkpoint's names (else an empty ``Metadata``, or the
        dataset's error)."""
        classes = model_classes(self.cfg, self.trained_classes, self.weights,
                                "predictor.metadata would name the model's classes")
        if classes.error is not None:  # a dataset that cannot be read here, or one refused with nothing recorded
            if classes.names is None:
                raise classes.error
            return Metadata(name="", thing_classes=classes.names)
        metadata = metadata_of_test_set(self.cfg)
        if classes.from_test_set or classes.names is None:
            return metadata if metadata is not None else Metadata(name="")
        return Metadata(name=metadata.name if metadata is not None else "", thing_classes=classes.names)

    def predict_batch(self, images: Sequence[np.ndarray], batch_size: int = 4) -> List[Dict]:
        """``predictor(image)`` for each of ``images`` (BGR uint8 ``(H, W, 3)`` arrays, all checked before the first
        runs), in batches of up to ``batch_size`` images of one network-input size, in the order given.

        Batches hold images of one network-input size only. In a padded batch a smaller image's detections change:
        the backbone sees the padding (its convolutions at the border, its GroupNorm statistics everywhere) and every
        encoder layer keeps a share of the batch's largest token budget. On trees_val with the main job's model, each
        424-px-wide tile batched with a 425-px-wide one had its scores moved by 0.020-0.039 at equal rank and 2-10
        more detections >= 0.3 (13 -> 23 for one). Grouped by size,
        each image gets the detections it gets alone, up to the float rounding of batched kernels (measured there:
        scores within 5e-7, boxes within 1e-4 px). Images of many sizes therefore run in more, smaller batches; the
        frames of a video share one size."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise ValueError("predict_batch takes a list of images; call predictor(image) for a single image")
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        try:
            images = list(images)
        except TypeError:
            raise ValueError(f"predict_batch takes a list of images, got {type(images).__name__}") from None
        inputs = [self.prepare(image, f"images[{i}]") for i, image in enumerate(images)]
        by_size: Dict[tuple, List[int]] = {}
        for i, item in enumerate(inputs):
            by_size.setdefault(tuple(item["image"].shape[1:]), []).append(i)
        results: List[Dict] = [{} for _ in inputs]
        for indices in by_size.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                for i, output in zip(chunk, self.run([inputs[i] for i in chunk])):
                    results[i] = output
        return results
