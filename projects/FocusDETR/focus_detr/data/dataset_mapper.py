"""Turns one detectron2 dataset dict into the model's input dict (DETR recipe).

Training picks one of two augmentation pipelines per image with probability ``crop_probability`` (0.5 officially):
the plain multi-scale resize, or the resize -> random crop -> multi-scale resize pipeline. Crowd boxes are dropped,
boxes emptied by the crop are removed, images are delivered in ``img_format`` (RGB for the official weights).
"""
import copy
import logging

import numpy as np
import torch
from detectron2.data import detection_utils
from detectron2.data import transforms as T

from .image_io import SIDES_SWAPPED, dark_image_warning, open_image

__all__ = ["SIZE_FIX", "DetrDatasetMapper", "check_image_size", "image_size_problem"]

logger = logging.getLogger(__name__)

# what each EXIF orientation tag does to the stored pixels when the file is read upright; 5-8 swap the sides
_ORIENTATIONS = {2: "mirrored", 3: "rotated 180 degrees", 4: "flipped upside down", 5: "transposed",
                 6: "rotated 90 degrees clockwise", 7: "transversed", 8: "rotated 90 degrees counter-clockwise"}


# what the size lines ask for
SIZE_FIX = "fix the dataset's width/height of this image"


def image_size_problem(dataset_dict, height, width, orientation=1):
    """What is wrong, in one line without the fix (:data:`SIZE_FIX`), with an image read ``height`` x ``width``
    pixels (upright: its EXIF ``orientation`` applied) where its dataset dict gives another ``height`` / ``width``
    (its boxes are in those pixels), or None. It names the file and says which number is which; where the two are
    swapped, it names the orientation tag that swapped the sides (a photo stored sideways, read upright as detectron2
    reads it) when the file has one, else the dataset's swap."""
    expected = (dataset_dict.get("height", height), dataset_dict.get("width", width))
    if expected == (height, width):
        return None
    swapped = ""
    if expected == (width, height) and orientation in SIDES_SWAPPED:
        swapped = (f" (swapped: the image file has EXIF orientation {orientation}, which turns it "
                   f"{_ORIENTATIONS[orientation]} when it is read, as detectron2 reads it; give the size of the "
                   "upright image)")
    elif expected == (width, height):
        swapped = " (the two are swapped)"
    return (f"image {dataset_dict.get('file_name')} is {width}x{height} pixels (width x height) but the dataset gives "
            f"width {expected[1]} and height {expected[0]}{swapped}")


def check_image_size(dataset_dict, image, orientation=1):
    """detectron2's ``check_image_size``: the image read ``(H, W, C)``, with the EXIF ``orientation`` its file has
    (:func:`.image_io.open_image`'s), must have the dataset's ``height`` and ``width``, which it fills in where the
    dataset gives none; ValueError (:func:`image_size_problem`) otherwise."""
    height, width = image.shape[:2]
    problem = image_size_problem(dataset_dict, height, width, orientation)
    if problem is not None:
        raise ValueError(f"{problem}: {SIZE_FIX}")
    dataset_dict["height"], dataset_dict["width"] = height, width


def orientation_warning(file_name, orientation, upright_size, size_given):
    """A warning for an image turned from its stored pixels by its EXIF ``orientation`` tag when read, where the
    dataset cannot tell which pixels its boxes were drawn on; None otherwise.

    The tag is applied when the image is read, as detectron2 does. Boxes drawn on the stored pixels by a tool that
    ignores it then lie on the wrong objects without any error. Where the tag swaps unequal sides and the dataset
    gives the size (``size_given``), that size is the upright one (:func:`check_image_size` refuses the other), so the
    dataset is upright; every other tagged image is ambiguous.

    Args:
        upright_size (tuple[int, int]): (H, W) of the image as read.
    """
    if orientation not in _ORIENTATIONS:
        return None
    if orientation in SIDES_SWAPPED and upright_size[0] != upright_size[1] and size_given:
        return None
    return (f"image {file_name} has EXIF orientation {orientation}: it is read {_ORIENTATIONS[orientation]} from its "
            "stored pixels, as detectron2 reads it, so its boxes must have been drawn on the upright image "
            "(tools/visualize_data.py shows them); other images with an orientation tag are not named")


class DetrDatasetMapper:
    """Callable: dataset dict (detectron2 format) -> model input dict.

    Output keys: ``image`` (3, H, W) uint8 tensor in ``img_format``, ``height``/``width`` of the original image (used
    to rescale predictions), the dataset's ``file_name``/``image_id``, and in training ``instances``
    (``gt_boxes`` absolute XYXY in the augmented image, ``gt_classes``).
    """

    def __init__(self, augmentation, augmentation_with_crop=None, is_train: bool = True, img_format: str = "RGB",
                 crop_probability: float = 0.5):
        """
        Args:
            augmentation (list[Augmentation]): the plain pipeline (the only one at test time).
            augmentation_with_crop (list[Augmentation] or None): the pipeline with a random crop, training only.
            is_train (bool): keep annotations as ``instances`` (True) or drop them (False).
            img_format (str): "RGB" or "BGR".
            crop_probability (float): probability to use ``augmentation_with_crop`` for an image.
        """
        if not 0.0 <= crop_probability <= 1.0:
            raise ValueError(f"crop_probability must be in [0, 1], got {crop_probability}")
        if augmentation_with_crop is not None and not is_train:  # it would crop test images at random
            raise ValueError("DetrDatasetMapper: augmentation_with_crop is for training only; a test mapper "
                             "(is_train=False) takes augmentation_with_crop=None")
        if img_format not in ("RGB", "BGR"):  # "L" failed at the first step as a (1, H, W) image, "XYZ" in PIL
            raise ValueError(f"DetrDatasetMapper: img_format must be 'RGB' or 'BGR' (the model takes 3 channels), got "
                             f"{img_format!r}")
        self.augmentation = T.AugmentationList(list(augmentation))
        self.augmentation_with_crop = (
            None if augmentation_with_crop is None else T.AugmentationList(list(augmentation_with_crop))
        )
        self.is_train = is_train
        self.img_format = img_format
        self.crop_probability = crop_probability
        self._orientation_named = False  # one warning per mapper (and data-loader worker) is enough
        self._dark_named = False
        logger.info(
            f"DetrDatasetMapper (train={is_train}): augmentation {augmentation}; with crop (p={crop_probability}) "
            f"{augmentation_with_crop}"
        )

    def _choose_pipeline(self):
        if self.augmentation_with_crop is None:
            return self.augmentation
        # the decision draws from np.random like the augmentations do, so one seed fixes the whole sample
        return self.augmentation_with_crop if np.random.rand() <= self.crop_probability else self.augmentation

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image, orientation, _, bits_used = open_image(dataset_dict["file_name"], self.img_format)
        size_given = "height" in dataset_dict and "width" in dataset_dict
        check_image_size(dataset_dict, image, orientation)
        if not self._orientation_named:
            warning = orientation_warning(dataset_dict["file_name"], orientation, image.shape[:2], size_given)
            if warning is not None:
                logger.warning(warning)
                self._orientation_named = True
        if not self._dark_named:
            warning = dark_image_warning(dataset_dict["file_name"], bits_used)
            if warning is not None:
                logger.warning(f"{warning}; other such images are not named")
                self._dark_named = True

        aug_input = T.AugInput(image)
        try:
            transforms = _augment(self._choose_pipeline(), aug_input)
        except ValueError as error:  # PIL's "height and width must be > 0": a resize made a side 0 pixels
            height, width = image.shape[:2]
            raise ValueError(
                f"image {dataset_dict['file_name']} ({height}x{width} pixels) cannot be resized by the mapper's "
                f"augmentation: {error} (a side resized to 0 pixels: the image is too elongated, or a size of the "
                "mapper's augmentation is 0); remove it from the dataset, or fix the size") from None
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        annotations = dataset_dict.pop("annotations", None)
        if not self.is_train or annotations is None:
            return dataset_dict
        kept = []
        for annotation in annotations:
            if annotation.get("iscrowd", 0) != 0:
                continue
            annotation = {k: v for k, v in annotation.items() if k not in ("segmentation", "keypoints")}
            kept.append(detection_utils.transform_instance_annotations(annotation, transforms, image_shape))
        instances = detection_utils.annotations_to_instances(kept, image_shape)
        dataset_dict["instances"] = detection_utils.filter_empty_instances(instances)
        return dataset_dict


def _augment(pipeline: T.AugmentationList, aug_input: T.AugInput) -> T.TransformList:
    """``pipeline(aug_input)``, one augmentation at a time: fvcore's flip of a one-pixel side leaves a negative
    stride on that side, which numpy still calls contiguous and the next flip's ``torch.from_numpy`` refuses (a
    1-pixel-wide image failed training at random)."""
    transforms = []
    for augmentation in pipeline.augs:
        transforms.append(augmentation(aug_input))
        if min(aug_input.image.strides) < 0:
            aug_input.image = aug_input.image.copy()
    return T.TransformList(transforms)
