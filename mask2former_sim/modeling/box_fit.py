"""How well predicted masks fit their GT boxes: the measures SIM's Eq. 6 weights positives by, that the teacher
statistics log, and that the pairwise schedule (:mod:`.pairwise_schedule`) watches.

- :func:`mask_box_iou` — IoU of a mask's tight box (``p > 0.5``) with the GT box. It rises as the projection term
  forms the masks, but an outline of the object has the object's box: it cannot tell a mask from its outline.
- :func:`mask_box_fill` — the share of the GT box that ``p > 0.5`` covers: low for an outline, and near the
  object's own fill of its box for a formed mask.
"""

from __future__ import annotations

import torch

from ..structures.boxes import box_iou, masks_to_boxes

__all__ = ["mask_box_iou", "mask_box_fill"]


def mask_box_iou(mask_probs: torch.Tensor, gt_boxes: torch.Tensor, stride: int) -> torch.Tensor:
    """IoU of the tight box of each ``mask_probs[p] > 0.5`` (mask-stride pixels scaled by ``stride`` to input
    pixels) with ``gt_boxes[p]`` (XYXY, input pixels): (P, h, w) and (P, 4) → (P,); an empty mask has IoU 0."""
    boxes = masks_to_boxes(mask_probs > 0.5) * stride
    return torch.nan_to_num(box_iou(boxes, gt_boxes.reshape(-1, 4).float()).diagonal(), nan=0.0)


def mask_box_fill(mask_probs: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """Share of each box mask's cells where ``mask_probs > 0.5``: (P, h, w) and (P, h, w) → (P,) (0 for an empty
    box mask)."""
    inside = box_masks > 0
    covered = ((mask_probs > 0.5) & inside).flatten(1).sum(1)
    return covered / inside.flatten(1).sum(1).clamp_min(1)
