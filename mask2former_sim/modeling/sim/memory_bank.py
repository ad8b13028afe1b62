"""Online weakly-supervised copy-paste (SIM §3.3, Eq. 9, 11): the FIFO memory bank and the paste.

:class:`MemoryBank` keeps the last ``MEMORY_LENGTH`` training images of this process with their boxes, classes,
binary pseudo masks ``M̂'`` at input resolution (compressed RLE, see :func:`encode_masks`) and mask scores ``S_k``
(Eq. 11). Entries are COPIES on the CPU (the official code appended one dict per batch that every later image
overwrote). The bank is filled from the teacher's pseudo masks once SIM has started. It is NOT saved in
checkpoints (100 COCO crops are ~300 MB per process): after ``--resume`` it refills within
``MEMORY_LENGTH / batch`` iterations and pasting resumes as soon as it holds one entry, so a resumed run after
``START_ITER`` is not bitwise identical to an uninterrupted one.

:func:`paste_instances` pastes sampled bank instances onto a training image at the same location: originals
lose the pasted pixels, fully occluded ones are removed, partly occluded ones get the tight box of what remains
and keep the occluder so their projection target can be ``box ∖ paste``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Dict, List, Optional

import numpy as np
import pycocotools.mask as mask_util
import torch

from ...structures.boxes import box_raster, masks_to_boxes
from ..image_list import place

__all__ = [
    "MemoryBank",
    "encode_masks",
    "decode_masks",
    "num_instances_to_paste",
    "sample_instances",
    "paste_instances",
]


class MemoryBank:
    """FIFO bank of at most ``max_length`` images with their instances.

    An entry is ``{"image": uint8 (3, H, W), "padding_mask": bool (H, W), "boxes": (K, 4), "classes": (K,),
    "masks": K compressed RLEs of (H, W) masks (:func:`encode_masks`), "scores": (K,)}``, every tensor a CPU
    copy.
    """

    def __init__(self, max_length: int) -> None:
        if max_length < 1:
            raise ValueError(f"MODEL.SIM.COPY_PASTE.MEMORY_LENGTH must be >= 1, found {max_length}")
        self.max_length = max_length
        self.entries: deque = deque(maxlen=max_length)

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, entry: Dict[str, Any]) -> None:
        """Store a copy of ``entry`` (tensors cloned to the CPU, ``masks`` given as a (K, H, W) bool tensor and
        stored as RLEs); the oldest entry leaves when full."""
        if len(entry["classes"]) == 0:
            return
        stored = {k: v.detach().to("cpu", copy=True) for k, v in entry.items() if k != "masks"}
        stored["masks"] = encode_masks(entry["masks"])
        self.entries.append(stored)

    def sample(self, generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
        """A uniformly random entry."""
        if not self.entries:
            raise IndexError("the copy-paste memory bank is empty")
        return self.entries[int(torch.randint(len(self.entries), (), generator=generator))]


def encode_masks(masks: torch.Tensor) -> List[Dict[str, Any]]:
    """(K, H, W) bool → K COCO compressed RLEs (a 1024² mask takes a few KB instead of 1 MB)."""
    array = np.asfortranarray(masks.detach().cpu().numpy().transpose(1, 2, 0).astype(np.uint8))
    return mask_util.encode(array)


def decode_masks(rles: List[Dict[str, Any]], indices: torch.Tensor) -> torch.Tensor:
    """The masks ``rles[i]`` for ``i`` in ``indices`` as a (len(indices), H, W) bool tensor."""
    chosen = [rles[i] for i in indices.tolist()]
    height, width = chosen[0]["size"] if chosen else rles[0]["size"]
    if not chosen:
        return torch.zeros(0, height, width, dtype=torch.bool)
    return torch.from_numpy(mask_util.decode(chosen).transpose(2, 0, 1).astype(bool))


def num_instances_to_paste(num: int, fraction: float, min_inst: int, max_inst: int) -> int:
    """``clamp(round(fraction·num), min_inst, max_inst)``, at most ``num`` (SIM: ¼, 1, 3)."""
    k = int(math.floor(fraction * num + 0.5))
    return min(max(k, min_inst), max_inst, num)


def sample_instances(
    scores: torch.Tensor, k: int, power: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """``k`` distinct instance indices drawn with probability ∝ ``S^power`` (importance sampling)."""
    weights = scores.double().clamp_min(0) ** power
    if float(weights.sum()) <= 0:
        weights = torch.ones_like(weights)
    return torch.multinomial(weights, k, replacement=False, generator=generator)


def paste_instances(
    image: torch.Tensor,
    padding_mask: torch.Tensor,
    boxes: torch.Tensor,
    classes: torch.Tensor,
    entry: Dict[str, Any],
    chosen: torch.Tensor,
) -> Dict[str, torch.Tensor]:
    """Paste instances ``chosen`` of a bank ``entry`` onto one image at the same location (Eq. 9 data).

    Args:
        image: (3, H, W) uint8 target image; padding_mask: (H, W) bool, True = padding.
        boxes: (N, 4) XYXY; classes: (N,) of the target's instances.
        entry: a :class:`MemoryBank` entry; chosen: indices of its instances to paste.

    Returns:
        ``{"image", "boxes", "classes", "pasted": bool (N',), "paste_masks": bool (P, H, W) of the pasted
        instances (the last P of N'), "occlusion": bool (H, W) union of the pasted pixels}``. Pasted
        instances clipped to nothing are dropped; their boxes are the tight boxes of their pasted pixels.
    """
    height, width = image.shape[-2:]
    masks = place(decode_masks(entry["masks"], chosen), height, width, False)
    source_valid = ~place(entry["padding_mask"].bool(), height, width, True)
    masks &= source_valid & ~padding_mask.bool()
    nonempty = masks.flatten(1).any(1)
    masks, kept_chosen = masks[nonempty], chosen[nonempty]
    occlusion = masks.any(0) if masks.shape[0] else torch.zeros(height, width, dtype=torch.bool)
    out_image = image.clone()
    source = place(entry["image"], height, width, 0)
    out_image[:, occlusion] = source[:, occlusion]

    raster = box_raster(boxes, height, width)
    remaining = raster & ~occlusion
    keep = remaining.flatten(1).any(1)
    touched = (raster & occlusion).flatten(1).any(1)
    new_boxes = boxes.float().clone()
    shrink = keep & touched
    if bool(shrink.any()):
        new_boxes[shrink] = masks_to_boxes(remaining[shrink])
    pasted_boxes = masks_to_boxes(masks)
    pasted_classes = entry["classes"][kept_chosen].to(classes.dtype)
    return {
        "image": out_image,
        "boxes": torch.cat([new_boxes[keep], pasted_boxes]),
        "classes": torch.cat([classes[keep], pasted_classes]),
        "pasted": torch.cat(
            [torch.zeros(int(keep.sum()), dtype=torch.bool), torch.ones(masks.shape[0], dtype=torch.bool)]
        ),
        "paste_masks": masks,
        "occlusion": occlusion,
    }
