"""The model's two ends on the host side: batching images from their sizes, and detections rescaled to each
image's output size with a single device read for the whole batch."""
from typing import List, Sequence, Tuple

import torch
from detectron2.structures import Boxes, ImageList, Instances

__all__ = ["batch_images", "rescale_detections"]


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
