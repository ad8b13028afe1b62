"""A batch of images of different sizes as one zero-padded tensor (detectron2's ``ImageList``)."""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch

__all__ = ["pad_images", "place"]


def pad_images(images: Sequence[torch.Tensor], size_divisibility: int) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """Stack (C, H_i, W_i) images into (B, C, Hp, Wp), zero-padded at the bottom/right.

    Hp, Wp are the largest H, W rounded up to a multiple of ``size_divisibility`` (no rounding when ≤ 1).

    Returns:
        The batch tensor and the (H_i, W_i) of every image.
    """
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    max_h, max_w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    if size_divisibility > 1:
        max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
        max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
    batch = images[0].new_zeros((len(images), images[0].shape[0], max_h, max_w))
    for out, im in zip(batch, images):
        out[:, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch, sizes


def place(x: torch.Tensor, height: int, width: int, fill=0) -> torch.Tensor:
    """``x`` (..., h, w) cropped or padded (bottom/right, with ``fill``) to (..., height, width)."""
    out = x.new_full(x.shape[:-2] + (height, width), fill)
    h, w = min(height, x.shape[-2]), min(width, x.shape[-1])
    out[..., :h, :w] = x[..., :h, :w]
    return out
