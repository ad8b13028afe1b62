"""Sliding-window (tiled) inference: segment a large, crowded image tile by tile and merge the instances.

A model trained on small crops sees a whole microscopy image with hundreds of nuclei as overlapping tiles.
Every tile's instances are pasted back into image coordinates, then copies of one object found by several tiles
are merged:

* an instance is *truncated* when its box comes within ``border_margin`` pixels of an inner tile border (a border
  that is not the image border): the tile may have cut the object;
* two instances of the same class from different tiles are the same object when their masks, compared only
  inside the window both tiles see, have IoU > ``dedup_iou``;
* candidates are visited complete-first, then by score: a candidate that matches a complete kept instance is
  dropped (the tile that sees the object more centrally wins); a truncated candidate that matches a truncated
  kept instance is merged into it (mask union), so an object larger than the tile overlap is put back together.

Masks are stored cropped to their boxes, so memory grows with the objects, not with tiles × image size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from .postprocessing import bilinear_weights, resize_reach

logger = logging.getLogger(__name__)

InferFn = Callable[[List[Dict[str, Any]]], List[Dict[str, Any]]]


def tile_origins(length: int, tile_size: int, stride: int) -> List[int]:
    """Start offsets of tiles of ``tile_size`` every ``stride`` pixels covering [0, length); the last tile is
    aligned to the far border. A length not larger than the tile gives one tile at 0."""
    if tile_size <= 0 or stride <= 0 or stride > tile_size:
        raise ValueError(f"sliding window needs 0 < stride <= tile_size; got tile_size={tile_size}, stride={stride}")
    if length <= tile_size:
        return [0]
    origins = list(range(0, length - tile_size, stride))
    origins.append(length - tile_size)
    return origins


@dataclass
class _TileInstance:
    box: Tuple[int, int, int, int]  # x1, y1, x2, y2 in image pixels, exclusive ends
    mask: np.ndarray  # bool (y2 - y1, x2 - x1), the mask cropped to its box
    windows: List[Tuple[int, int, int, int]]  # x1, y1, x2, y2 of the tile(s) that produced it
    score: float
    label: int
    truncated: bool
    tile_index: int


def _crop_to(mask: np.ndarray, box: Tuple[int, int, int, int], region: Tuple[int, int, int, int]) -> np.ndarray:
    """The part of a box-cropped mask inside ``region`` (x1, y1, x2, y2 image pixels), zero-filled outside it."""
    x1, y1, x2, y2 = region
    out = np.zeros((max(y2 - y1, 0), max(x2 - x1, 0)), dtype=bool)
    ix1, iy1 = max(x1, box[0]), max(y1, box[1])
    ix2, iy2 = min(x2, box[2]), min(y2, box[3])
    if ix2 > ix1 and iy2 > iy1:
        out[iy1 - y1 : iy2 - y1, ix1 - x1 : ix2 - x1] = mask[iy1 - box[1] : iy2 - box[1], ix1 - box[0] : ix2 - box[0]]
    return out


def _intersect(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> Tuple[int, int, int, int]:
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def _union_box(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> Tuple[int, int, int, int]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _visibility(windows: Sequence[Tuple[int, int, int, int]], region: Tuple[int, int, int, int]) -> np.ndarray:
    """bool (h, w) over ``region``: True where one of ``windows`` (tiles) sees the pixel."""
    seen = np.zeros((region[3] - region[1], region[2] - region[0]), dtype=bool)
    for window in windows:
        x1, y1, x2, y2 = _intersect(window, region)
        if x2 > x1 and y2 > y1:
            seen[y1 - region[1] : y2 - region[1], x1 - region[0] : x2 - region[0]] = True
    return seen


def window_mask_iou(a: _TileInstance, b: _TileInstance) -> float:
    """IoU of two instances' masks restricted to the pixels that the tiles of both see (0 when disjoint)."""
    both = _intersect(a.box, b.box)
    if both[2] <= both[0] or both[3] <= both[1]:
        return 0.0
    region = _union_box(a.box, b.box)
    seen = _visibility(a.windows, region) & _visibility(b.windows, region)
    ma = _crop_to(a.mask, a.box, region) & seen
    mb = _crop_to(b.mask, b.box, region) & seen
    union = np.count_nonzero(ma | mb)
    return np.count_nonzero(ma & mb) / union if union > 0 else 0.0


def _collect_tile_instances(
    outputs: Sequence[Dict[str, Any]],
    tiles: Sequence[Tuple[int, int, int, int]],
    first_index: int,
    image_hw: Tuple[int, int],
    border_margin: int,
    min_score: float = 0.0,
) -> List[_TileInstance]:
    height, width = image_hw
    found = []
    for k, (out, tile) in enumerate(zip(outputs, tiles)):
        inst = out["instances"]
        masks = inst["pred_masks"].detach().to("cpu", torch.bool).numpy()
        boxes = inst["pred_boxes"].detach().cpu().long().tolist()  # tight boxes of the masks
        scores = inst["scores"].detach().cpu().tolist()
        labels = inst["pred_classes"].detach().cpu().tolist()
        tx1, ty1, tx2, ty2 = tile
        for mask, box, score, label in zip(masks, boxes, scores, labels):
            bx1, by1, bx2, by2 = box
            if bx2 <= bx1 or by2 <= by1 or score < min_score:
                continue
            truncated = (
                (tx1 > 0 and bx1 <= border_margin)
                or (ty1 > 0 and by1 <= border_margin)
                or (tx2 < width and bx2 >= (tx2 - tx1) - border_margin)
                or (ty2 < height and by2 >= (ty2 - ty1) - border_margin)
            )
            found.append(
                _TileInstance(
                    box=(bx1 + tx1, by1 + ty1, bx2 + tx1, by2 + ty1),
                    mask=mask[by1:by2, bx1:bx2].copy(),
                    windows=[tile],
                    score=float(score),
                    label=int(label),
                    truncated=bool(truncated),
                    tile_index=first_index + k,
                )
            )
    return found


def merge_tile_instances(candidates: List[_TileInstance], dedup_iou: float) -> List[_TileInstance]:
    """Greedy cross-tile de-duplication (complete instances first, then by score); see the module docstring.

    A truncated candidate that matches several truncated kept fragments (pieces of one large object, kept apart
    so far because the tiles between them came later) joins them all into the first one.
    """
    order = sorted(candidates, key=lambda c: (c.truncated, -c.score))
    kept: List[_TileInstance] = []
    kept_tiles: List[set] = []
    alive: List[bool] = []
    kept_boxes = np.zeros((len(order), 4), dtype=np.int64)  # rows [0, len(kept)) are used
    for cand in order:
        matches = []
        n = len(kept)
        if n:
            x1, y1, x2, y2 = cand.box
            boxes = kept_boxes[:n]
            overlaps = (boxes[:, 0] < x2) & (boxes[:, 2] > x1) & (boxes[:, 1] < y2) & (boxes[:, 3] > y1)
            for j in np.flatnonzero(overlaps).tolist():
                other = kept[j]
                if not alive[j] or other.label != cand.label or cand.tile_index in kept_tiles[j]:
                    continue
                if window_mask_iou(cand, other) > dedup_iou:
                    matches.append(j)
                    if not (cand.truncated and other.truncated):
                        break
        if not matches:
            kept_boxes[n] = cand.box
            kept.append(cand)
            kept_tiles.append({cand.tile_index})
            alive.append(True)
            continue
        if not all(cand.truncated and kept[j].truncated for j in matches):
            continue  # a complete copy of the object exists: this cut one is a duplicate
        first = matches[0]
        pieces = [cand]
        for j in matches[1:]:
            if kept_tiles[j].isdisjoint(kept_tiles[first]):
                pieces.append(kept[j])
                kept_tiles[first] |= kept_tiles[j]
                alive[j] = False
                kept_boxes[j] = (0, 0, 0, 0)
        target = kept[first]
        for piece in pieces:
            box = _union_box(target.box, piece.box)
            target.mask = _crop_to(target.mask, target.box, box) | _crop_to(piece.mask, piece.box, box)
            target.box = box
            target.windows.extend(piece.windows)
            target.score = max(target.score, piece.score)
        kept_tiles[first].add(cand.tile_index)
        kept_boxes[first] = target.box
    return [k for k, a in zip(kept, alive) if a]


def sliding_window_inference(
    infer_fn: InferFn,
    image: torch.Tensor,
    height: int,
    width: int,
    tile_size: int,
    stride: int,
    dedup_iou: float,
    border_margin: int,
    max_dets: int,
    batch_size: int = 4,
    min_score: float = 0.0,
    score_threshold: float = 0.0,
) -> Dict[str, torch.Tensor]:
    """Tiled inference on one (test-resized) image.

    Args:
        infer_fn: the model's ordinary per-image inference; takes a list of tile inputs
            ``{"image": uint8 (3, th, tw), "height": th, "width": tw}`` and returns ``[{"instances": {...}}]`` with
            masks at tile size and their tight boxes (``pred_boxes``).
        image: uint8 (3, H, W), the image as the model sees it (already resized).
        height, width: original image size; the returned masks are resized to it.
        tile_size, stride: tile side and distance between tile origins, in ``image`` pixels.
        dedup_iou: instances from different tiles with window mask IoU above this are one object.
        border_margin: an instance within this many pixels of an inner tile border counts as truncated.
        max_dets: keep at most this many instances (highest scores).
        batch_size: tiles per ``infer_fn`` call.
        min_score: tile instances scoring below this are dropped before merging (the merge is greedy over all
            candidates: the many near-zero "no object" queries of every tile would dominate its cost).
        score_threshold: merged instances scoring below this are not returned; their masks are never pasted into
            image-sized arrays (a demo threshold on a 12-megapixel image).
    Returns:
        ``{"pred_masks": bool (N, height, width), "pred_boxes": float (N, 4) XYXY from the masks,
        "scores": (N,), "pred_classes": int64 (N,)}``, sorted by descending score.
    """
    if image.dim() != 3:
        raise ValueError(f"sliding_window_inference expects an image (3, H, W); got shape {tuple(image.shape)}")
    img_h, img_w = int(image.shape[1]), int(image.shape[2])
    tiles = [
        (x0, y0, min(x0 + tile_size, img_w), min(y0 + tile_size, img_h))
        for y0 in tile_origins(img_h, tile_size, stride)
        for x0 in tile_origins(img_w, tile_size, stride)
    ]
    candidates: List[_TileInstance] = []
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        inputs = [
            {"image": image[:, y1:y2, x1:x2].contiguous(), "height": y2 - y1, "width": x2 - x1}
            for x1, y1, x2, y2 in chunk
        ]
        outputs = infer_fn(inputs)
        candidates.extend(_collect_tile_instances(outputs, chunk, start, (img_h, img_w), border_margin, min_score))
    kept = [c for c in merge_tile_instances(candidates, dedup_iou) if c.score >= score_threshold]
    kept.sort(key=lambda c: -c.score)
    kept = kept[:max_dets]
    logger.debug("Sliding window: %d tiles, %d tile instances, %d kept.", len(tiles), len(candidates), len(kept))
    return _assemble(kept, (img_h, img_w), (height, width))


def _tight_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """x1, y1, x2, y2 (exclusive ends) of a bool mask's foreground; (0, 0, 0, 0) when it is empty.

    :func:`~..structures.boxes.masks_to_boxes` for one small numpy mask (the tensor version's per-call cost is larger
    than the mask's, once per pasted instance)."""
    rows, cols = mask.any(1), mask.any(0)
    if not rows.any():
        return 0, 0, 0, 0
    y1, y2 = int(rows.argmax()), len(rows) - int(rows[::-1].argmax())
    x1, x2 = int(cols.argmax()), len(cols) - int(cols[::-1].argmax())
    return x1, y1, x2, y2


def _assemble(kept: List[_TileInstance], image_hw: Tuple[int, int], out_hw: Tuple[int, int]) -> Dict[str, torch.Tensor]:
    """Paste the kept instances into (N, height, width) masks (bilinear resize of the binary mask, > 0.5).

    Each mask is resized only over its box: the output rows and columns that the box's input pixels reach, by the
    separable bilinear weights, which equals resizing the whole image-sized mask.
    """
    masks = torch.zeros(len(kept), out_hw[0], out_hw[1], dtype=torch.bool)
    boxes = torch.zeros(len(kept), 4, dtype=torch.float32)
    masks_np, boxes_np = masks.numpy(), boxes.numpy()
    resize = tuple(image_hw) != tuple(out_hw)
    if resize and kept:
        weights_y = bilinear_weights(image_hw[0], out_hw[0])
        weights_x = bilinear_weights(image_hw[1], out_hw[1])
        first_y, last_y = resize_reach(weights_y.numpy())
        first_x, last_x = resize_reach(weights_x.numpy())
    for k, c in enumerate(kept):
        x1, y1, x2, y2 = c.box
        mask = c.mask
        if resize:
            oy1, oy2 = int(first_y[y1:y2].min()), int(last_y[y1:y2].max())
            ox1, ox2 = int(first_x[x1:x2].min()), int(last_x[x1:x2].max())
            if oy2 <= oy1 or ox2 <= ox1:
                continue
            # torch's product: numpy's BLAS threads would spin beside torch's (see postprocessing)
            resized = (
                weights_y[oy1:oy2, y1:y2] @ torch.from_numpy(mask.astype(np.float32)) @ weights_x[ox1:ox2, x1:x2].T
            )
            mask = resized.numpy() > 0.5
            x1, y1 = ox1, oy1
        masks_np[k, y1 : y1 + mask.shape[0], x1 : x1 + mask.shape[1]] = mask
        bx1, by1, bx2, by2 = _tight_box(mask)
        if bx2 > bx1:
            boxes_np[k] = (bx1 + x1, by1 + y1, bx2 + x1, by2 + y1)
    return {
        "pred_masks": masks,
        "pred_boxes": boxes,
        "scores": torch.tensor([c.score for c in kept], dtype=torch.float32),
        "pred_classes": torch.tensor([c.label for c in kept], dtype=torch.int64),
    }
