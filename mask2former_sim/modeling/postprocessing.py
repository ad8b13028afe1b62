"""Instance-segmentation post-processing of Mask2Former outputs (pure functions on one image).

Order (Mask2Former's ``instance_inference``, with boxes from masks): top-k over queries × classes, then the
selected mask logits are brought to the output resolution (upsampled to the padded input size, cropped to the
image size, resized to the requested output size), binarised at logit 0, scored by the mean foreground
probability inside the binary mask, and boxed tightly (:func:`~..structures.boxes.masks_to_boxes`).

On the CPU each mask is resized only over its window (:func:`instances_at_size`): bilinear resizing is a convex
combination of input cells per output pixel, so an output pixel can be foreground (logit > 0) only where the
resize weights reach a positive input cell. The window is the output rows and columns that the rows and columns
of the mask's positive cells reach; outside it the mask is background and adds nothing to its score.
"""

from __future__ import annotations

import functools
from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..structures.boxes import masks_to_boxes

__all__ = [
    "topk_queries",
    "resize_mask_logits",
    "masks_to_instances",
    "instances_at_size",
    "instance_inference",
    "bilinear_weights",
    "resize_reach",
]

# masks brought to the output size per step, in output pixels (~128 MB of fp32 logits): a 12-megapixel photo is
# resized a few masks at a time, so memory does not grow with the number of instances
RESIZE_CHUNK_PIXELS = 1 << 25


def topk_queries(mask_cls: torch.Tensor, topk: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k (query, class) pairs by class probability; a query may appear with several classes.

    Args:
        mask_cls: (Q, K+1) class logits (the last class is "no object").
        topk: k; clipped to Q·K.

    Returns:
        scores (k,) class probabilities, labels (k,) int64 in [0, K), query indices (k,) int64.
    """
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[1] - 1
    scores = F.softmax(mask_cls.float(), dim=-1)[:, :-1]
    k = min(topk, num_queries * num_classes)
    scores, flat_idx = scores.flatten().topk(k, sorted=True)
    return scores, flat_idx % num_classes, flat_idx // num_classes


def resize_mask_logits(
    mask_logits: torch.Tensor, padded_size: Tuple[int, int], image_size: Tuple[int, int], output_size: Tuple[int, int]
) -> torch.Tensor:
    """Bring stride-4 mask logits to the output resolution (detectron2's ``sem_seg_postprocess``).

    Args:
        mask_logits: (N, h, w) logits predicted for the padded batch tensor.
        padded_size: (Hp, Wp) of the padded batch tensor.
        image_size: (H, W) of this image inside the padded tensor (top-left aligned).
        output_size: (height, width) to return, usually the original image size.

    Returns:
        (N, height, width) float logits.
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.new_zeros((0, *output_size), dtype=torch.float32)
    x = F.interpolate(mask_logits[:, None].float(), size=tuple(padded_size), mode="bilinear", align_corners=False)
    x = x[:, :, : image_size[0], : image_size[1]]
    if tuple(x.shape[-2:]) != tuple(output_size):
        x = F.interpolate(x, size=tuple(output_size), mode="bilinear", align_corners=False)
    return x[:, 0]


def bilinear_weights(in_size: int, out_size: int) -> torch.Tensor:
    """(out_size, in_size) weights of 1-D bilinear resizing with ``align_corners=False`` (PyTorch's), so that
    ``W_y @ X @ W_x.T`` is ``F.interpolate(X, (out_h, out_w), mode="bilinear", align_corners=False)``."""
    eye = torch.eye(in_size, dtype=torch.float32)[None]  # row k: a unit impulse at input position k
    return F.interpolate(eye, size=out_size, mode="linear", align_corners=False)[0].T.contiguous()


def resize_reach(weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For (out, in) resize weights: per input index, the first output index with a nonzero weight on it and one
    past the last; an input index no output reaches gets (out, 0), which no range reduction picks."""
    nonzero = weights > 0
    reached = nonzero.any(0)
    first = np.where(reached, nonzero.argmax(0), weights.shape[0])
    last = np.where(reached, weights.shape[0] - nonzero[::-1].argmax(0), 0)
    return first, last


@functools.lru_cache(maxsize=32)
def _resize_weights(low: int, padded: int, image: int, output: int) -> torch.Tensor:
    """(output, low) 1-D weights of :func:`resize_mask_logits` along one axis: ``low`` → ``padded``, the first
    ``image`` entries kept, → ``output`` (a resize to the same size is the identity). Cached: read only."""
    weights = bilinear_weights(low, padded)[:image]
    if image != output:
        weights = bilinear_weights(image, output) @ weights
    return weights


def _windowed_instances(
    mask_logits: torch.Tensor,
    class_scores: torch.Tensor,
    labels: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
) -> Dict[str, torch.Tensor]:
    """:func:`masks_to_instances` of :func:`resize_mask_logits`, each mask resized over its window only (see the
    module docstring); equal up to float rounding (the two resizes as one product of weights)."""
    num = mask_logits.shape[0]
    height, width = output_size
    masks = torch.zeros(num, height, width, dtype=torch.bool)
    boxes = torch.zeros(num, 4, dtype=torch.float32)
    mask_scores = torch.zeros(num, dtype=torch.float32)
    if num:
        low_h, low_w = mask_logits.shape[-2:]
        weights_y = _resize_weights(low_h, padded_size[0], image_size[0], height)
        weights_x = _resize_weights(low_w, padded_size[1], image_size[1], width)
        first_y, last_y = resize_reach(weights_y.numpy())
        first_x, last_x = resize_reach(weights_x.numpy())
        logits = mask_logits.detach().float().cpu()
        logits_np = logits.numpy()
        masks_np, boxes_np, scores_np = masks.numpy(), boxes.numpy(), mask_scores.numpy()
        positive = logits_np > 0
        rows_any, cols_any = positive.any(2), positive.any(1)
        for k in np.flatnonzero(rows_any.any(1)):
            rows, cols = np.flatnonzero(rows_any[k]), np.flatnonzero(cols_any[k])
            y1, y2 = int(first_y[rows].min()), int(last_y[rows].max())
            x1, x2 = int(first_x[cols].min()), int(last_x[cols].max())
            # torch's product, not numpy's: numpy's BLAS threads would spin beside torch's (the next image's
            # network ran 2x slower)
            window = (weights_y[y1:y2] @ logits[k] @ weights_x[x1:x2].T).numpy()
            foreground = window > 0
            count = int(foreground.sum())
            if count == 0:
                continue
            probs = 1.0 / (1.0 + np.exp(-window[foreground], dtype=np.float32))
            scores_np[k] = probs.sum(dtype=np.float32) / (np.float32(count) + np.float32(1e-6))
            masks_np[k, y1:y2, x1:x2] = foreground
            fg_rows, fg_cols = np.flatnonzero(foreground.any(1)), np.flatnonzero(foreground.any(0))
            boxes_np[k] = (x1 + fg_cols[0], y1 + fg_rows[0], x1 + fg_cols[-1] + 1, y1 + fg_rows[-1] + 1)
    return {
        "pred_masks": masks,
        "pred_boxes": boxes,
        "scores": class_scores.detach().float().cpu() * mask_scores,
        "pred_classes": labels.detach().cpu().to(torch.int64),
    }


def masks_to_instances(
    mask_logits: torch.Tensor, class_scores: torch.Tensor, labels: torch.Tensor
) -> Dict[str, torch.Tensor]:
    """Binarise mask logits and score them: score = class prob × mean σ(logit) inside the binary mask.

    Args:
        mask_logits: (N, H, W) logits at output resolution.
        class_scores: (N,) class probabilities.
        labels: (N,) int64 classes.

    Returns:
        {"pred_masks": bool (N, H, W), "pred_boxes": float (N, 4) XYXY, "scores": (N,), "pred_classes": int64 (N,)}.
    """
    pred_masks = mask_logits > 0
    binary = pred_masks.float()
    mask_scores = (mask_logits.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return {
        "pred_masks": pred_masks,
        "pred_boxes": masks_to_boxes(pred_masks),
        "scores": class_scores * mask_scores,
        "pred_classes": labels.to(torch.int64),
    }


def instances_at_size(
    mask_logits: torch.Tensor,
    class_scores: torch.Tensor,
    labels: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    chunk_pixels: int = RESIZE_CHUNK_PIXELS,
) -> Dict[str, torch.Tensor]:
    """:func:`resize_mask_logits` then :func:`masks_to_instances`: on the CPU each mask over its window only,
    elsewhere a few masks at a time.

    Args:
        mask_logits: (N, h, w) stride-4 logits of the selected (query, class) pairs, in the order of the scores.
        class_scores, labels: (N,) class probabilities and classes.
        padded_size, image_size, output_size: as :func:`resize_mask_logits`.
        chunk_pixels: at most this many output pixels of fp32 logits at a time (not on the CPU).

    Returns:
        The instances dict of :func:`masks_to_instances` (identical to resizing all masks at once; on the CPU up
        to float rounding).
    """
    if mask_logits.device.type == "cpu":
        return _windowed_instances(mask_logits, class_scores, labels, padded_size, image_size, output_size)
    chunk = max(1, int(chunk_pixels) // max(1, output_size[0] * output_size[1]))
    parts = []
    for start in range(0, max(mask_logits.shape[0], 1), chunk):
        rows = slice(start, start + chunk)
        logits = resize_mask_logits(mask_logits[rows], padded_size, image_size, output_size)
        parts.append(masks_to_instances(logits, class_scores[rows], labels[rows]))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def instance_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor, topk: int) -> Dict[str, torch.Tensor]:
    """Mask2Former instance inference on masks already at output resolution.

    Args:
        mask_cls: (Q, K+1) class logits.
        mask_pred: (Q, H, W) mask logits.
        topk: detections kept (``TEST.DETECTIONS_PER_IMAGE``).

    Returns:
        The instances dict of :func:`masks_to_instances`, sorted by class probability.
    """
    class_scores, labels, query_idx = topk_queries(mask_cls, topk)
    return masks_to_instances(mask_pred[query_idx].float(), class_scores, labels)
