"""Draw instance predictions or ground truth on an RGB image with OpenCV: translucent masks, contours,
mask-derived boxes and "class score" labels."""

from __future__ import annotations

import colorsys
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch


def instance_color(index: int) -> tuple:
    """A bright RGB colour for instance ``index`` (golden-ratio hue steps, so neighbours differ)."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def draw_instances_on_image(
    image: np.ndarray,
    masks: Optional[np.ndarray],
    boxes: Optional[np.ndarray],
    labels: Sequence[str],
    alpha: float = 0.45,
) -> np.ndarray:
    """Overlay instances on an RGB uint8 image (H, W, 3) and return the drawn copy.

    Args:
        masks: bool (N, H, W) or None; drawn translucent with a contour.
        boxes: float (N, 4) XYXY or None; drawn as rectangles.
        labels: N strings written at the top-left of each box (or of the mask when no box is given).
    """
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    n = len(labels)
    height, width = out.shape[:2]
    thickness = max(1, round(min(height, width) / 400))
    font_scale = max(0.35, min(height, width) / 1200)
    if masks is not None and n:
        overlay = out.astype(np.float32)
        for k in range(n):
            color = np.array(instance_color(k), dtype=np.float32)
            overlay[masks[k]] = overlay[masks[k]] * (1 - alpha) + color * alpha
        out = overlay.round().clip(0, 255).astype(np.uint8)
        for k in range(n):
            contours, _ = cv2.findContours(masks[k].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, instance_color(k), thickness)
    for k in range(n):
        color = instance_color(k)
        if boxes is not None:
            x1, y1, x2, y2 = [int(round(v)) for v in boxes[k]]
            cv2.rectangle(out, (x1, y1), (max(x2 - 1, x1), max(y2 - 1, y1)), color, thickness)
            anchor = (x1, y1)
        elif masks is not None and masks[k].any():
            ys, xs = np.nonzero(masks[k])
            anchor = (int(xs.min()), int(ys.min()))
        else:
            continue
        _draw_label(out, labels[k], anchor, color, font_scale)
    return out


def _draw_label(image: np.ndarray, text: str, anchor: tuple, color: tuple, font_scale: float) -> None:
    """Text on a filled box of ``color`` just above ``anchor`` (inside the image)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), baseline = cv2.getTextSize(text, font, font_scale, 1)
    x = min(max(anchor[0], 0), max(image.shape[1] - tw - 2, 0))
    y = anchor[1] - th - baseline - 2
    if y < 0:
        y = min(anchor[1], max(image.shape[0] - th - baseline - 2, 0))
    cv2.rectangle(image, (x, y), (x + tw + 2, y + th + baseline + 2), color, -1)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    text_color = (0, 0, 0) if luminance > 128 else (255, 255, 255)
    cv2.putText(image, text, (x + 1, y + th + 1), font, font_scale, text_color, 1, cv2.LINE_AA)


def draw_instance_predictions(
    image: np.ndarray, instances: Mapping[str, Any], class_names: Optional[Sequence[str]] = None
) -> np.ndarray:
    """Draw the model's instances dict (``pred_masks``, ``pred_boxes``, ``scores``, ``pred_classes``) on ``image``
    (RGB uint8 (H, W, 3)); labels read "<class> <score>"."""
    scores = _to_numpy(instances["scores"]).astype(float)
    classes = _to_numpy(instances["pred_classes"]).astype(int)
    masks = _to_numpy(instances["pred_masks"]).astype(bool) if "pred_masks" in instances else None
    boxes = _to_numpy(instances["pred_boxes"]).astype(float) if "pred_boxes" in instances else None
    labels = [f"{class_name(c, class_names)} {s:.2f}" for c, s in zip(classes, scores)]
    return draw_instances_on_image(image, masks, boxes, labels)


def class_name(class_id: int, class_names: Optional[Sequence[str]]) -> str:
    """The name of a contiguous class id, or the id itself when names are unknown or out of range."""
    if class_names is not None and 0 <= class_id < len(class_names):
        return str(class_names[class_id])
    return str(class_id)


def save_image(image: np.ndarray, path: str) -> None:
    """Write an RGB uint8 image (H, W, 3) to ``path`` (format from the extension, e.g. PNG)."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image file {path} (check the extension and the folder's permissions)")


def instances_to_json(instances: Mapping[str, Any], class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """JSON-serialisable instances: boxes XYXY, scores, classes (+ names) and masks as compressed COCO RLE."""
    scores = _to_numpy(instances["scores"]).astype(float)
    classes = _to_numpy(instances["pred_classes"]).astype(int)
    boxes = _to_numpy(instances["pred_boxes"]).astype(float).reshape(-1, 4)
    masks = _to_numpy(instances["pred_masks"]).astype(np.uint8)
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(scores) else []
    result = []
    for k in range(len(scores)):
        rle = rles[k]
        result.append(
            {
                "box_xyxy": [round(v, 2) for v in boxes[k].tolist()],
                "score": float(scores[k]),
                "class_id": int(classes[k]),
                "class_name": class_name(int(classes[k]), class_names),
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            }
        )
    return {"instances": result}
