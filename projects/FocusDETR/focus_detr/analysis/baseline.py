"""A trivial detector to compare a trained model against: boxes of the training set's median size tiled on a grid
over every image, all with random scores. Its COCO AP50 is what "detects something" must clearly beat."""
import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances

__all__ = ["median_box_size", "grid_baseline_predictions", "evaluate_grid_baseline"]


def median_box_size(dataset_dicts):
    """Median (width, height) in pixels of all annotated boxes (detectron2 dataset dicts, XYWH_ABS or XYXY_ABS)."""
    from detectron2.structures import BoxMode

    sizes = []
    for record in dataset_dicts:
        for annotation in record.get("annotations", []):
            x0, y0, x1, y1 = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
            sizes.append((x1 - x0, y1 - y0))
    if not sizes:
        raise ValueError("the training set has no boxes: no baseline box size")
    return tuple(float(v) for v in np.median(np.asarray(sizes), axis=0))


def grid_baseline_predictions(record, box_size, seed=0):
    """Instances for one image: boxes of ``box_size`` (w, h) on a grid with that step, random scores, class 0."""
    width, height = record["width"], record["height"]
    box_width, box_height = box_size
    xs = np.arange(0.0, max(width - box_width, 0.0) + 1e-6, box_width)
    ys = np.arange(0.0, max(height - box_height, 0.0) + 1e-6, box_height)
    x0, y0 = np.meshgrid(xs, ys)
    boxes = np.stack([x0.ravel(), y0.ravel(), x0.ravel() + box_width, y0.ravel() + box_height], axis=1)
    generator = torch.Generator().manual_seed(seed + int(record.get("image_id", 0)))
    instances = Instances((height, width))
    instances.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    instances.scores = torch.rand(len(boxes), generator=generator)
    instances.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
    return instances


def evaluate_grid_baseline(train_dataset, test_dataset, output_dir=None):
    """COCO metrics of the grid baseline on ``test_dataset`` (box size from ``train_dataset``); single-class data."""
    from detectron2.evaluation import COCOEvaluator

    box_size = median_box_size(DatasetCatalog.get(train_dataset))
    evaluator = COCOEvaluator(test_dataset, output_dir=output_dir)
    evaluator.reset()
    for record in DatasetCatalog.get(test_dataset):
        evaluator.process([record], [{"instances": grid_baseline_predictions(record, box_size)}])
    return evaluator.evaluate(), box_size
