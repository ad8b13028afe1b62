"""Boxes: (N, 4) XYXY tensors in input pixels, and the one rule that relates them to pixels.

A box is continuous (COCO, detectron2): pixel ``x`` spans ``[x, x + 1)``. Every box mask of the project is
:func:`pixels_in_boxes` (BoxInst's projection and pairwise targets, SIM's pseudo-mask region and copy-paste
occlusion, the labelling tool's box-mask floor), every tight box of a mask is :func:`masks_to_boxes` (the data
mapper, pasted instances, predictions, the box fit of matched masks), and every box overlap is :func:`box_iou`.
The two rules agree: the raster of a mask's tight box is exactly the mask's pixel extent.

- :func:`pixels_in_boxes` — which pixels of a grid of pixel indices each box covers;
- :func:`box_raster` — at every pixel of an image; :func:`boxes_to_stride_masks` — at the mask stride;
- :func:`masks_to_boxes` — tight boxes of binary masks;
- :func:`box_area`, :func:`box_iou` — areas and pairwise intersection over union.
"""

from __future__ import annotations

import torch

__all__ = ["pixels_in_boxes", "box_raster", "boxes_to_stride_masks", "masks_to_boxes", "box_area", "box_iou"]


def pixels_in_boxes(boxes: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Which pixels (y, x) of the grid ``ys`` × ``xs`` (integer pixel indices) lie in each box.

    Pixel ``x`` belongs to the box when it overlaps it, ``⌊x1⌋ ≤ x < max(⌈x2⌉, ⌊x1⌋ + 1)`` (same in y; a
    zero-width box keeps one pixel). The tight box of a binary mask (:func:`masks_to_boxes`, x2 = last pixel + 1)
    therefore covers exactly the mask's pixel extent. BoxInst fills ``[int(x1) : int(x2) + 1]``, one pixel more
    wherever x2 is an integer.

    Args:
        boxes: (N, 4) XYXY; ys: (H',) and xs: (W',) pixel indices.
    Returns:
        (N, H', W') bool.
    """
    boxes = boxes.float()
    lo = boxes.floor()
    hi = torch.maximum(boxes.ceil(), lo.roll(2, dims=1) + 1)  # x2 ≥ ⌊x1⌋ + 1, y2 ≥ ⌊y1⌋ + 1
    ys, xs = ys.to(boxes), xs.to(boxes)
    in_y = (ys[None] >= lo[:, 1:2]) & (ys[None] < hi[:, 3:4])
    in_x = (xs[None] >= lo[:, 0:1]) & (xs[None] < hi[:, 2:3])
    return in_y[:, :, None] & in_x[:, None, :]


def box_raster(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, height, width) bool: every pixel of the image grid that lies in each box (:func:`pixels_in_boxes`)."""
    return pixels_in_boxes(boxes, torch.arange(height), torch.arange(width))


def boxes_to_stride_masks(boxes: torch.Tensor, height: int, width: int, stride: int = 4) -> torch.Tensor:
    """Box masks at the mask stride: :func:`box_raster` sampled at pixels ``stride·i + stride // 2``.

    Args:
        boxes: (N, 4) XYXY in input pixels.
        height, width: padded input size (divisible by ``stride``).
    Returns:
        (N, height // stride, width // stride) float32 masks in {0, 1}.
    """
    ys = torch.arange(height // stride, device=boxes.device) * stride + stride // 2
    xs = torch.arange(width // stride, device=boxes.device) * stride + stride // 2
    return pixels_in_boxes(boxes, ys, xs).float()


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes of binary masks; an empty mask gets (0, 0, 0, 0).

    x1, y1 = the first foreground column/row, x2, y2 = the last foreground column/row + 1 (detectron2's
    ``BitMasks.get_bounding_boxes``), so a box covers every foreground pixel's square.

    Args:
        masks: (N, H, W) bool (any dtype: nonzero is foreground).
    Returns:
        (N, 4) float32 on the masks' device.
    """
    boxes = torch.zeros(masks.shape[0], 4, dtype=torch.float32, device=masks.device)
    if masks.numel() == 0:
        return boxes
    height, width = masks.shape[-2:]
    any_x = masks.any(dim=1)  # (N, W)
    any_y = masks.any(dim=2)  # (N, H)
    xs = torch.arange(width, device=masks.device)
    ys = torch.arange(height, device=masks.device)
    nonempty = any_x.any(dim=1)
    x1 = torch.where(any_x, xs, width).amin(dim=1)
    x2 = torch.where(any_x, xs, -1).amax(dim=1) + 1
    y1 = torch.where(any_y, ys, height).amin(dim=1)
    y2 = torch.where(any_y, ys, -1).amax(dim=1) + 1
    stacked = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(nonempty[:, None], stacked, boxes)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) XYXY → (N,) areas ``(x2 − x1)·(y2 − y1)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``|a ∩ b| / (|a| + |b| − |a ∩ b|)`` of (N, 4) and (M, 4) XYXY boxes → (N, M).

    Two empty boxes give 0 / 0 = NaN (as ``torchvision.ops.box_iou``); callers that need a number replace it.
    """
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    size = (bottom_right - top_left).clamp(min=0)
    intersection = size[..., 0] * size[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - intersection
    return intersection / union
