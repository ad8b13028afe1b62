"""Geometric augmentations applied consistently to an image, its boxes and its masks.

Two layers, as detectron2: an *augmentation* (``RandomFlip``, ``ResizeScale``, ``FixedSizeCrop``,
``ResizeShortestEdge``, ``RandomCrop``) draws its random parameters from a ``numpy.random.Generator`` and returns a
deterministic *transform* (flip, resize, crop, pad) that maps image ``(H, W, 3)`` uint8, boxes ``(N, 4)`` XYXY in
pixel-edge coordinates (a pixel ``i`` spans ``[i, i+1)``) and masks ``(N, H, W)`` bool. Images are resized
bilinearly (PIL, as detectron2), masks by centre-aligned nearest neighbour, boxes by moving their corners.

Mask2Former's LSJ is ``RandomFlip → ResizeScale(0.1, 2.0, IMAGE_SIZE) → FixedSizeCrop(IMAGE_SIZE, pad 128)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image


class Transform(ABC):
    """A deterministic geometric transform of an image, its boxes and its masks.

    Masks are transformed by gathering: each transform says which input row/column an output row/column reads
    (:meth:`source_index`), so a whole chain costs one gather at the output size (no full-size intermediates).
    """

    @abstractmethod
    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, C)`` uint8 → transformed image."""

    @abstractmethod
    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """``(N, 4)`` XYXY → transformed boxes (corners moved directly)."""

    @abstractmethod
    def output_shape(self, h: int, w: int) -> Tuple[int, int]:
        """Size ``(h', w')`` of the output for an ``(h, w)`` input."""

    @abstractmethod
    def source_index(self, ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
        """Input row/column read by output rows ``ys`` and columns ``xs`` (int64; −1 = padding)."""

    def apply_masks(self, masks: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` bool → transformed masks (nearest neighbour; padding is False)."""
        return gather_masks(masks, [self])


class HFlipTransform(Transform):
    def __init__(self, width: int):
        self.width = width

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[:, ::-1])

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        out = boxes.copy()
        out[:, 0], out[:, 2] = self.width - boxes[:, 2], self.width - boxes[:, 0]
        return out

    def output_shape(self, h: int, w: int) -> Tuple[int, int]:
        return h, w

    def source_index(self, ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
        return ys, w - 1 - xs


class VFlipTransform(Transform):
    def __init__(self, height: int):
        self.height = height

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[::-1])

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        out = boxes.copy()
        out[:, 1], out[:, 3] = self.height - boxes[:, 3], self.height - boxes[:, 1]
        return out

    def output_shape(self, h: int, w: int) -> Tuple[int, int]:
        return h, w

    def source_index(self, ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
        return h - 1 - ys, xs


class ResizeTransform(Transform):
    """Resize ``(h, w) → (new_h, new_w)``: image bilinear, masks centre-aligned nearest, boxes scaled."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        self.h, self.w, self.new_h, self.new_w = h, w, new_h, new_w

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == (self.new_h, self.new_w):
            return image
        return np.asarray(Image.fromarray(image).resize((self.new_w, self.new_h), Image.BILINEAR))

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        scale = np.array([self.new_w / self.w, self.new_h / self.h] * 2, dtype=np.float64)
        return (boxes * scale).astype(boxes.dtype)

    def output_shape(self, h: int, w: int) -> Tuple[int, int]:
        return self.new_h, self.new_w

    def source_index(self, ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
        """Output pixel ``j`` reads ``floor((j + 0.5) · in / out)``."""
        src_y = np.floor((ys + 0.5) * (self.h / self.new_h)).astype(np.int64).clip(0, self.h - 1)
        src_x = np.floor((xs + 0.5) * (self.w / self.new_w)).astype(np.int64).clip(0, self.w - 1)
        return src_y, src_x


class CropTransform(Transform):
    """Keep the window ``[x0, x0 + w) × [y0, y0 + h)``; boxes are shifted and clipped to it."""

    def __init__(self, x0: int, y0: int, w: int, h: int):
        self.x0, self.y0, self.w, self.h = x0, y0, w, h

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return image[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        out = boxes - np.array([self.x0, self.y0, self.x0, self.y0], dtype=boxes.dtype)
        return clip_boxes(out, self.h, self.w)

    def output_shape(self, h: int, w: int) -> Tuple[int, int]:
        return self.h, self.w

    def source_index(self, ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
        return ys + self.y0, xs + self.x0


class PadTransform(Transform):
    """Pad on the right and bottom: image with ``pad_value``, masks with False."""

    def __init__(self, pad_right: int, pad_bottom: int, pad_value: float = 128.0):
        self.pad_right, self.pad_bottom, self.pad_value = pad_right, pad_bottom, pad_value

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        pad = ((0, self.pad_bottom), (0, self.pad_right)) + ((0, 0),) * (image.ndim - 2)
        return np.pad(image, pad, constant_values=np.asarray(self.pad_value).astype(image.dtype))

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        return boxes

    def output_shape(self, h: int, w: int) -> Tuple[int, int]:
        return h + self.pad_bottom, w + self.pad_right

    def source_index(self, ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
        return np.where(ys < h, ys, -1), np.where(xs < w, xs, -1)


class TransformList(Transform):
    """Transforms applied in order."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            image = t.apply_image(image)
        return image

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            boxes = t.apply_boxes(boxes)
        return boxes

    def output_shape(self, h: int, w: int) -> Tuple[int, int]:
        for t in self.transforms:
            h, w = t.output_shape(h, w)
        return h, w

    def source_index(self, ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
        sizes = [(h, w)]
        for t in self.transforms:
            sizes.append(t.output_shape(*sizes[-1]))
        for t, (th, tw) in zip(reversed(self.transforms), reversed(sizes[:-1])):
            new_ys, new_xs = t.source_index(ys, xs, th, tw)
            ys, xs = np.where(ys < 0, -1, new_ys), np.where(xs < 0, -1, new_xs)
        return ys, xs

    def apply_masks(self, masks: np.ndarray) -> np.ndarray:
        return gather_masks(masks, self.transforms)


class Augmentation(ABC):
    """Draws a :class:`Transform` for an image of size ``(h, w)`` from ``rng``."""

    @abstractmethod
    def get_transform(self, h: int, w: int, rng: np.random.Generator) -> Transform:
        """The transform for an ``(h, w)`` image, its randomness drawn from ``rng``."""


class RandomFlip(Augmentation):
    def __init__(self, prob: float = 0.5, horizontal: bool = True, vertical: bool = False):
        if horizontal and vertical:
            raise ValueError("RandomFlip flips either horizontally or vertically, not both")
        self.prob, self.horizontal, self.vertical = prob, horizontal, vertical

    def get_transform(self, h: int, w: int, rng: np.random.Generator) -> Transform:
        if rng.uniform() >= self.prob or not (self.horizontal or self.vertical):
            return TransformList([])
        return HFlipTransform(w) if self.horizontal else VFlipTransform(h)


class ResizeScale(Augmentation):
    """LSJ resize: scale ``s ~ U[min_scale, max_scale]``, factor ``min(s·target_h / h, s·target_w / w)``."""

    def __init__(self, min_scale: float, max_scale: float, target_height: int, target_width: int):
        self.min_scale, self.max_scale = min_scale, max_scale
        self.target_height, self.target_width = target_height, target_width

    def get_transform(self, h: int, w: int, rng: np.random.Generator) -> Transform:
        s = rng.uniform(self.min_scale, self.max_scale)
        factor = min(s * self.target_height / h, s * self.target_width / w)
        new_h, new_w = max(int(round(h * factor)), 1), max(int(round(w * factor)), 1)
        return ResizeTransform(h, w, new_h, new_w)


class RandomScale(Augmentation):
    """Resize by a factor ``f ~ U[min_factor, max_factor]`` of the image's own size (native-scale jitter, e.g.
    microscopy where object size in pixels matters more than image size); ``min = max`` gives a fixed scale."""

    def __init__(self, min_factor: float, max_factor: float):
        if not 0 < min_factor <= max_factor:
            raise ValueError(f"RandomScale needs 0 < min_factor <= max_factor, got {min_factor}, {max_factor}")
        self.min_factor, self.max_factor = min_factor, max_factor

    def get_transform(self, h: int, w: int, rng: np.random.Generator) -> Transform:
        factor = rng.uniform(self.min_factor, self.max_factor) if self.max_factor > self.min_factor else self.min_factor
        new_h, new_w = max(int(round(h * factor)), 1), max(int(round(w * factor)), 1)
        return ResizeTransform(h, w, new_h, new_w)


class FixedSizeCrop(Augmentation):
    """Random crop to at most ``crop_size`` (offset ``round(U[0,1]·max(in − out, 0))``), then pad right/bottom."""

    def __init__(self, crop_size: Tuple[int, int], pad_value: float = 128.0):
        self.crop_size, self.pad_value = tuple(crop_size), pad_value

    def get_transform(self, h: int, w: int, rng: np.random.Generator) -> Transform:
        out_h, out_w = self.crop_size
        off = np.round(np.array([max(h - out_h, 0), max(w - out_w, 0)]) * rng.uniform(0.0, 1.0, size=2)).astype(int)
        ch, cw = min(h, out_h), min(w, out_w)
        return TransformList(
            [
                CropTransform(int(off[1]), int(off[0]), cw, ch),
                PadTransform(out_w - cw, out_h - ch, self.pad_value),
            ]
        )


class ResizeShortestEdge(Augmentation):
    """Shortest edge to a length drawn from ``short_edge_length`` ("choice") or its [min, max] ("range"),
    longest edge capped at ``max_size``. A length of 0 means no resize."""

    def __init__(self, short_edge_length: Sequence[int], max_size: int, sample_style: str = "choice"):
        if sample_style not in ("choice", "range"):
            raise ValueError(f"sample_style must be 'choice' or 'range', got {sample_style!r}")
        if sample_style == "range" and len(short_edge_length) != 2:
            raise ValueError(f"'range' sampling needs [min, max] lengths, got {list(short_edge_length)}")
        self.lengths, self.max_size, self.sample_style = list(short_edge_length), max_size, sample_style

    def get_transform(self, h: int, w: int, rng: np.random.Generator) -> Transform:
        if self.sample_style == "range":
            size = int(rng.integers(self.lengths[0], self.lengths[1] + 1))
        else:
            size = int(self.lengths[rng.integers(len(self.lengths))])
        if size == 0:
            return TransformList([])
        new_h, new_w = shortest_edge_size(h, w, size, self.max_size)
        return ResizeTransform(h, w, new_h, new_w)


class RandomCrop(Augmentation):
    """Uniformly placed crop of ``(min(crop_h, h), min(crop_w, w))`` pixels (the multi-scale mapper)."""

    def __init__(self, crop_size: Tuple[int, int]):
        self.crop_size = tuple(crop_size)

    def get_transform(self, h: int, w: int, rng: np.random.Generator) -> Transform:
        ch, cw = min(h, self.crop_size[0]), min(w, self.crop_size[1])
        y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        return CropTransform(x0, y0, cw, ch)


def shortest_edge_size(h: int, w: int, size: int, max_size: int) -> Tuple[int, int]:
    """detectron2's ResizeShortestEdge output shape: short side ``size``, long side ≤ ``max_size``."""
    scale = size / min(h, w)
    new_h, new_w = (size, scale * w) if h < w else (scale * h, size)
    if max_size > 0 and max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


def apply_augmentations(
    augs: Sequence[Augmentation], image: np.ndarray, rng: np.random.Generator
) -> Tuple[np.ndarray, TransformList]:
    """Draw and apply each augmentation in turn (each sees the previous output's size)."""
    transforms: List[Transform] = []
    for aug in augs:
        t = aug.get_transform(image.shape[0], image.shape[1], rng)
        image = t.apply_image(image)
        transforms.append(t)
    return image, TransformList(transforms)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clip XYXY boxes ``(N, 4)`` to ``[0, width] × [0, height]``."""
    out = boxes.copy()
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


def nonempty_boxes(boxes: np.ndarray, threshold: float = 1e-5) -> np.ndarray:
    """Keep-mask ``(N,)``: width and height above ``threshold`` (detectron2's filter_empty_instances)."""
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)


def gather_masks(masks: np.ndarray, transforms: Sequence[Transform]) -> np.ndarray:
    """Apply a chain of transforms to bool masks ``(N, H, W)`` with one gather at the output size."""
    chain = TransformList(transforms)
    out_h, out_w = chain.output_shape(masks.shape[1], masks.shape[2])
    ys, xs = chain.source_index(np.arange(out_h), np.arange(out_w), masks.shape[1], masks.shape[2])
    out = masks[:, ys.clip(0)[:, None], xs.clip(0)[None, :]]
    if (ys < 0).any() or (xs < 0).any():
        out &= (ys >= 0)[:, None] & (xs >= 0)[None, :]
    return out
