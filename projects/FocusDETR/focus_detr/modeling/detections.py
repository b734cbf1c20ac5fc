"""The model's two ends: batching images from their sizes; the top detections over queries x classes, made
Instances and rescaled to each image's output size with a single device read for the whole batch."""
from typing import List, Sequence, Tuple

import torch
from detectron2.structures import Boxes, ImageList, Instances

from ..layers.box_ops import box_cxcywh_to_xyxy
from ..layers.traced_shapes import capped_count

__all__ = ["batch_images", "instances_of", "rescale_detections", "top_detections"]


def batch_images(images: List[torch.Tensor]) -> ImageList:
    """Images ``(C, h_i, w_i)`` -> an ImageList ``(B, C, H, W)`` padded bottom/right with zeros to the largest height
    and width (detectron2's ``ImageList.from_tensors`` without size divisibility), sized from the shapes alone: no
    value is read back from the device."""
    sizes = [tuple(image.shape[-2:]) for image in images]
    if len(images) == 1:
        return ImageList(images[0][None], sizes)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for i, (image, (h, w)) in enumerate(zip(images, sizes)):
        batch[i, :, :h, :w].copy_(image)
    return ImageList(batch, sizes)


def rescale_detections(results: List[Instances], output_sizes: Sequence[Tuple[int, int]]) -> List[Instances]:
    """detectron2's ``detector_postprocess`` for box detections: ``results`` (boxes in input pixels) scaled to each
    ``(height, width)`` of ``output_sizes``, clipped to it, and without empty boxes.

    The same arithmetic, in place on the result boxes; the number of non-empty boxes of every image (and whether all
    boxes are finite) is read from the device in one transfer, where ``detector_postprocess`` reads once per check and
    per field. Raises ``FloatingPointError`` on infinite or NaN boxes (``detector_postprocess`` asserts)."""
    boxes, stats = [], []
    for result, (height, width) in zip(results, output_sizes):
        image_h, image_w = result.image_size
        tensor = result.pred_boxes.tensor
        finite = torch.isfinite(tensor).all()
        for coords, scale, limit in ((tensor[:, 0::2], width / image_w, width), (tensor[:, 1::2], height / image_h, height)):
            if scale != 1.0:  # x * 1.0 == x
                coords.mul_(scale)
            coords.clamp_(min=0, max=limit)
        keep = ((tensor[:, 2:] - tensor[:, :2]) > 0).all(1)
        boxes.append((tensor, keep))
        stats.append(torch.stack([keep.sum(), finite.sum()]))
    counts = torch.cat(stats).tolist()
    rescaled = []
    for i, (result, (tensor, keep), size) in enumerate(zip(results, boxes, output_sizes)):
        num_kept, finite = counts[2 * i], counts[2 * i + 1]
        if not finite:
            raise FloatingPointError(f"FocusDETR: the predicted boxes of image {i} contain infinite or NaN values")
        fields = {"pred_boxes": tensor, "scores": result.scores, "pred_classes": result.pred_classes}
        if num_kept < len(keep):
            # the kept boxes in their order: stable sort puts them first
            inds = keep.to(torch.uint8).argsort(descending=True, stable=True)[:num_kept]
            fields = {name: value.index_select(0, inds) for name, value in fields.items()}
        rescaled.append(
            Instances(size, pred_boxes=Boxes(fields["pred_boxes"]), scores=fields["scores"],
                      pred_classes=fields["pred_classes"])
        )
    return rescaled


def top_detections(pred_logits: torch.Tensor, pred_boxes: torch.Tensor, num_detections: int):
    """Top ``num_detections`` over queries x classes (no NMS). pred_logits ``(B, Q, K)``, pred_boxes ``(B, Q, 4)``
    normalised cxcywh -> scores ``(B, k)``, labels ``(B, k)`` int64 and boxes ``(B, k, 4)`` normalised xyxy."""
    batch, num_queries, num_classes = pred_logits.shape
    k = capped_count(num_detections, num_queries * num_classes)
    scores, inds = pred_logits.sigmoid().view(batch, -1).topk(k, dim=1)
    query_inds = torch.div(inds, num_classes, rounding_mode="floor")
    labels = inds % num_classes
    boxes = pred_boxes.gather(1, query_inds[..., None].expand(-1, -1, 4))
    return scores, labels, box_cxcywh_to_xyxy(boxes)


def instances_of(scores, labels, boxes, image_sizes) -> List[Instances]:
    """:func:`top_detections`' outputs -> Instances per image, boxes scaled (in place) to its ``(h, w)``."""
    results = []
    # Indexed, not iterated: autograd refuses in-place edits (the scaling, rescale_detections') of unbind's views.
    for i, (h, w) in enumerate(image_sizes):
        result = Instances((h, w))
        result.pred_boxes = Boxes(boxes[i])
        result.pred_boxes.scale(scale_x=w, scale_y=h)
        result.scores = scores[i]
        result.pred_classes = labels[i]
        results.append(result)
    return results
