"""What a config's model learns from, as pictures (``tools/visualize_data.py``): the ground-truth boxes of a loader's
dataset on its images (``annotation``), or the training loader's images after augmentation with the boxes the loss is
given (``dataloader``: flips, resizes and crops applied, crowd boxes and boxes cropped away removed)."""
import copy
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
from detectron2.config import instantiate
from detectron2.data import detection_utils
from detectron2.structures import BoxMode
from detectron2.utils.registry import locate

from ..data.dataset_mapper import check_image_size
from ..data.image_io import open_image
from ..engine.config import ConfigError, _dataset_names_in
from ..engine.test_set import class_names_of_loader
from ..engine.settings import FORMAT_KEYS, mapper_entry

__all__ = ["SOURCES", "GroundTruth", "annotation_samples", "check_output_outside_data", "loader_class_names",
           "loader_dataset_names", "loader_node", "loader_records", "loader_samples", "picture_path"]

SOURCES = ("annotation", "dataloader")


@dataclass
class GroundTruth:
    """One picture's content: the image file it comes from and its dataset id, its pixels (uint8 BGR ``(H, W, 3)``:
    the original image or the augmented network input), boxes ``(N, 4)`` XYXY in those pixels, classes ``(N,)``
    (contiguous ids) and crowd flags ``(N,)``."""

    file_name: str
    image_id: object
    image_bgr: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    crowd: np.ndarray


def loader_node(cfg, split: str):
    """``cfg.dataloader.<split>`` (``split``: "train" or "test"); ConfigError when the config has none."""
    node = (cfg.get("dataloader", None) or {}).get(split, None)
    if node is None:
        raise ConfigError(f"the config has no dataloader.{split} to draw")
    return node


def loader_dataset_names(cfg, split: str) -> List[str]:
    """The names of the datasets ``dataloader.<split>`` reads."""
    return _dataset_names_in(loader_node(cfg, split))


def loader_class_names(cfg, split: str) -> List[str]:
    """The class names of ``dataloader.<split>``'s (first) dataset; [] when its metadata has none (the boxes are then
    labelled with class numbers)."""
    return class_names_of_loader(loader_node(cfg, split)) or []


def loader_records(cfg, split: str) -> List[dict]:
    """The dataset dicts of ``dataloader.<split>`` as that loader reads them (its ``filter_empty`` and the dataset
    checks applied)."""
    dataset_node = loader_node(cfg, split).get("dataset", None)
    if dataset_node is None:
        raise ConfigError(f"dataloader.{split} has no dataset to draw")
    records = instantiate(dataset_node)
    if not isinstance(records, (list, tuple)) or not all(isinstance(r, dict) for r in records):
        raise ConfigError(f"dataloader.{split}.dataset gives {type(records).__name__}, not a list of detectron2 "
                          "dataset dicts: its annotations cannot be drawn")
    return list(records)


def annotation_samples(records: List[dict], skip: Callable[[str, str], None]) -> Iterator[GroundTruth]:
    """The images of the dataset dicts ``records`` with their annotations, read one at a time. An image that cannot
    be read, or whose size is not the dataset's (its boxes would be drawn elsewhere; the training loader refuses it),
    is passed to ``skip(file_name, why)`` and left out."""
    for record in records:
        try:
            image, orientation, _, _ = open_image(record["file_name"], "BGR")
            check_image_size(dict(record), image, orientation)
        except (OSError, ValueError) as error:
            skip(record["file_name"], str(error))
            continue
        annotations = record.get("annotations", [])
        boxes = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        yield GroundTruth(
            record["file_name"],
            record.get("image_id", None),
            image,
            np.asarray(boxes, np.float64).reshape(-1, 4),
            np.asarray([a["category_id"] for a in annotations], np.int64),
            np.asarray([bool(a.get("iscrowd", 0)) for a in annotations], bool),
        )


def loader_samples(cfg, limit: int, records: Optional[List[dict]] = None) -> Iterator[GroundTruth]:
    """The first ``limit`` images the training loader (``dataloader.train``, in this process: no workers) gives the
    model, drawn in network-input pixels with the ground truth it gives the loss. ``records``: its dataset's dicts
    when loaded already (:func:`loader_records`), so that a large json is not loaded twice."""
    node = copy.deepcopy(loader_node(cfg, "train"))
    if "num_workers" in node:
        node.num_workers = 0  # nothing to gain from workers for a few pictures, and no processes to leave behind
    _, image_format = mapper_entry(node.get("mapper", None), FORMAT_KEYS)
    if records is None or "dataset" not in node:
        loader = instantiate(node)
    else:
        target = node._target_
        build = locate(target) if isinstance(target, str) else target
        loader = build(dataset=records, **{key: instantiate(node[key]) for key in node
                                           if key not in ("_target_", "dataset")})
    count = 0
    for batch in loader:
        for item in batch:
            pixels = item["image"].permute(1, 2, 0).numpy()
            rgb = detection_utils.convert_image_to_rgb(pixels, image_format or "RGB")
            instances = item.get("instances", None)
            if instances is None:
                raise ConfigError("dataloader.train's mapper gives no \"instances\" (is_train=False?): there is no "
                                  "ground truth to draw")
            boxes = instances.gt_boxes.tensor.numpy().astype(np.float64)
            yield GroundTruth(item.get("file_name", f"image{count}"), item.get("image_id", None),
                              np.ascontiguousarray(rgb[:, :, ::-1]), boxes, instances.gt_classes.numpy(),
                              np.zeros(len(boxes), bool))
            count += 1
            if count >= limit:
                return


def check_output_outside_data(output_dir: str, records: List[dict]) -> None:
    """ValueError when ``output_dir`` is the folder of an image of ``records``: the pictures would be written among
    the data, and one named like an image (``x_annotations.png``) would replace it. Called before anything is
    written."""
    output = os.path.realpath(output_dir)
    for record in records:
        if os.path.realpath(os.path.dirname(record["file_name"])) == output:
            raise ValueError(f"--output-dir {output_dir} holds the dataset's images ({record['file_name']}): the "
                             "pictures would be written among them; choose another folder")


def picture_path(output_dir: str, file_name: str, suffix: str, stems: Dict[str, str]) -> str:
    """``output_dir/<stem><suffix>`` for the picture of the image ``file_name``: its name without extension, numbered
    from 2 when an image of another folder with that name came first (``stems``: file name -> stem, updated)."""
    if file_name not in stems:
        stem = os.path.splitext(os.path.basename(file_name))[0]
        name, number = stem, 1
        while name in stems.values():
            number += 1
            name = f"{stem}-{number}"
        stems[file_name] = name
    return os.path.join(output_dir, stems[file_name] + suffix)
