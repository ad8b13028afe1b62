"""COCO instances json → dataset dicts, with validation; image reading; segmentation decoding.

Dataset dict (detectron2's layout)::

    {"file_name": str, "image_id": int, "height": int, "width": int,
     "annotations": [{"id": int, "bbox": [x0, y0, x1, y1] absolute XYXY float, "category_id": int in 0..K-1,
                      "segmentation": polygons or RLE (absent in a box-only json), "iscrowd": 0}]}

Crowd regions are dropped (they are ignore regions for evaluation). Boxes are clipped to the image; boxes with
zero or negative size, non-finite values or nothing left inside the image are skipped and counted. Polygons with
fewer than 3 points are removed from their annotation and counted (as ``tools/convert_yolo_seg.py`` drops them;
the box stays). Everything else that is wrong (missing or empty or malformed json, missing fields, unknown
category or image ids, a polygon with an odd number of coordinates) is an error naming the file and the
annotation id. The checks run in every supervision mode: the json is validated once, on load.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

_IMAGE_FIELDS = ("id", "file_name", "height", "width")
_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox")
# EXIF orientations that swap width and height (EXIF 2.3 tag 0x0112: 5-8), and how the image is to be displayed
_EXIF_TRANSPOSING = {
    5: "mirrored and turned 90° counter-clockwise",
    6: "turned 90° clockwise",
    7: "mirrored and turned 90° clockwise",
    8: "turned 90° counter-clockwise",
}


@dataclass
class DatasetSummary:
    """What :func:`parse_coco_json` kept and dropped."""

    num_images: int = 0
    num_instances: int = 0
    instances_per_class: Dict[str, int] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)
    dropped_polygons: int = 0  # polygons with fewer than 3 points, removed from annotations that are kept
    has_segmentation: bool = False

    def format(self, name: str) -> str:
        lines = [
            f"dataset {name}: {self.num_images} images, {self.num_instances} instances"
            f"{'' if self.has_segmentation else ' (box-only: no segmentation)'}"
        ]
        width = max([len(c) for c in self.instances_per_class] + [8])
        lines += [f"  {c:<{width}} {n:>7}" for c, n in self.instances_per_class.items()]
        if self.dropped:
            lines.append("  dropped annotations: " + ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())))
        if self.dropped_polygons:
            lines.append(f"  dropped polygons: {self.dropped_polygons} with fewer than 3 points")
        return "\n".join(lines)


def read_json(json_file: str) -> Any:
    """Read a json file; errors name the file (and the line/column of a syntax error)."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"annotation json not found: {json_file}")
    with open(json_file, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise ValueError(f"annotation json {json_file} is empty; expected a COCO instances json object")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"line {e.lineno} column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise ValueError(f"annotation json {json_file} is not valid json ({where})") from e


def read_categories(json_file: str) -> Tuple[List[str], Dict[int, int]]:
    """``(thing_classes, dataset_id → contiguous id)`` with category ids sorted ascending."""
    return _categories(_check_top_level(read_json(json_file), json_file), json_file)


def parse_coco_json(json_file: str, image_root: str) -> Tuple[List[Dict[str, Any]], DatasetSummary]:
    """Validate a COCO instances json and convert it to dataset dicts; also return what was dropped."""
    data = _check_top_level(read_json(json_file), json_file)
    classes, id_map = _categories(data, json_file)

    images: Dict[int, Dict[str, Any]] = {}
    for img in data["images"]:
        missing = [k for k in _IMAGE_FIELDS if not isinstance(img, dict) or k not in img]
        if missing:
            raise ValueError(f"{json_file}: image entry {_short(img)} lacks required field(s) {missing}")
        if img["id"] in images:
            raise ValueError(f"{json_file}: image id {img['id']} appears more than once")
        images[img["id"]] = {
            "file_name": os.path.join(image_root, img["file_name"]),
            "image_id": img["id"],
            "height": int(img["height"]),
            "width": int(img["width"]),
            "annotations": [],
        }

    summary = DatasetSummary(num_images=len(images))
    per_class: Counter = Counter()
    seen_ids = set()
    for ann in data.get("annotations", []):
        ann_id = ann.get("id", "<no id>") if isinstance(ann, dict) else "<not an object>"
        missing = [k for k in _ANNOTATION_FIELDS if not isinstance(ann, dict) or k not in ann]
        if missing:
            raise ValueError(f"{json_file}: annotation id {ann_id} lacks required field(s) {missing}")
        if ann_id in seen_ids:
            raise ValueError(f"{json_file}: annotation id {ann_id} appears more than once")
        seen_ids.add(ann_id)
        if ann["category_id"] not in id_map:
            raise ValueError(
                f"{json_file}: annotation id {ann_id} has category_id {ann['category_id']!r}, which is not in "
                f"'categories' (known ids: {sorted(id_map)})"
            )
        if ann["image_id"] not in images:
            raise ValueError(
                f"{json_file}: annotation id {ann_id} refers to image_id {ann['image_id']!r}, which is not in 'images'"
            )
        img = images[ann["image_id"]]
        if ann.get("iscrowd", 0):
            summary.dropped["crowd"] += 1
            continue
        box, why = _clip_xywh_box(ann["bbox"], img["width"], img["height"], json_file, ann_id)
        if why:
            summary.dropped[why] += 1
            logger.debug("%s: annotation id %s skipped (%s): bbox %s", json_file, ann_id, why, ann["bbox"])
            continue
        record = {"id": ann_id, "bbox": box, "category_id": id_map[ann["category_id"]], "iscrowd": 0}
        if "segmentation" in ann:
            record["segmentation"], num_degenerate = _check_segmentation(ann["segmentation"], json_file, ann_id)
            summary.dropped_polygons += num_degenerate
            summary.has_segmentation = True
        img["annotations"].append(record)
        per_class[record["category_id"]] += 1

    summary.num_instances = sum(per_class.values())
    summary.instances_per_class = {classes[i]: per_class[i] for i in range(len(classes))}
    return list(images.values()), summary


def load_coco_json(json_file: str, image_root: str, dataset_name: str = "") -> List[Dict[str, Any]]:
    """:func:`parse_coco_json` and log the dataset summary (and a warning when annotations were skipped)."""
    dicts, summary = parse_coco_json(json_file, image_root)
    logger.info(summary.format(dataset_name or json_file))
    skipped = {k: v for k, v in summary.dropped.items() if k != "crowd"}
    if skipped:
        logger.warning(
            "%s: skipped %d annotation(s) with unusable boxes: %s",
            dataset_name or json_file,
            sum(skipped.values()),
            ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())),
        )
    if summary.dropped_polygons:
        logger.warning(
            "%s: removed %d polygon(s) with fewer than 3 points (an annotation left with none keeps its box for "
            "box/SIM supervision; mask supervision skips it)",
            dataset_name or json_file,
            summary.dropped_polygons,
        )
    return dicts


def read_image(path: str) -> np.ndarray:
    """Read an image file as uint8 RGB ``(H, W, 3)``; greyscale, palette and RGBA are converted.

    EXIF orientation is applied (as detectron2). A missing or unreadable file is an error naming it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise OSError(f"cannot read image file {path}: {e}") from e


def check_image_size(image: np.ndarray, dataset_dict: Dict[str, Any]) -> None:
    """The size in the json must match the file (a mismatch means the annotations do not fit the image).

    ``image`` is as :func:`read_image` returns it (EXIF-transposed); when the json's size is that of the stored
    pixels of a file whose EXIF orientation tag swaps width and height, the error says so.
    """
    h, w = image.shape[:2]
    json_w, json_h = dataset_dict["width"], dataset_dict["height"]
    if (h, w) == (json_h, json_w):
        return
    path = dataset_dict["file_name"]
    message = f"image {path} is {w}x{h} (WxH) but the annotation json says {json_w}x{json_h}"
    orientation = _exif_orientation(path)
    if orientation in _EXIF_TRANSPOSING and (w, h) == (json_h, json_w):
        message += (
            f": the file has the EXIF orientation tag (value {orientation}: display it "
            f"{_EXIF_TRANSPOSING[orientation]}), images are read EXIF-transposed (as detectron2 reads them), and "
            f"the json's width/height are those of the un-rotated, stored pixels. "
            f"If the annotations were drawn on the rotated image, re-export the json with width {w} and height "
            f"{h}; if they were drawn on the stored pixels, strip the orientation tag (e.g. "
            f"`exiftool -Orientation= {path}`)"
        )
    raise ValueError(message)


def _exif_orientation(path: str) -> int:
    """The EXIF orientation tag of an image file (1, upright, when it has none or cannot be read)."""
    try:
        with Image.open(path) as img:
            return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError):
        return 1


def segmentation_to_rle(segm: Any, height: int, width: int) -> Dict[str, Any]:
    """Polygons, uncompressed RLE or compressed RLE → compressed RLE of size ``(height, width)``."""
    if isinstance(segm, list):
        polys = [p for p in segm if len(p) >= 6 and len(p) % 2 == 0]
        if not polys:
            return mask_util.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
        return mask_util.merge(mask_util.frPyObjects(polys, height, width))
    rle = mask_util.frPyObjects(segm, height, width) if isinstance(segm.get("counts"), list) else segm
    if list(rle["size"]) != [height, width]:
        raise ValueError(f"RLE of size {list(rle['size'])} does not match the image size {[height, width]}")
    return rle


def decode_rles(rles: List[Dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Compressed RLEs → uint8 masks ``(N, H, W)`` (a transposed view of pycocotools' ``(H, W, N)`` array)."""
    if not rles:
        return np.zeros((0, height, width), dtype=np.uint8)
    with warnings.catch_warnings():  # pycocotools' Cython code trips a numpy-2 copy=False DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_util.decode(rles).transpose(2, 0, 1)


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """Polygons, uncompressed RLE or compressed RLE → bool mask ``(height, width)`` (pycocotools)."""
    return decode_rles([segmentation_to_rle(segm, height, width)], height, width)[0].astype(bool)


def _check_top_level(data: Any, json_file: str) -> Dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(
            f"{json_file}: expected a COCO json object with 'images', 'annotations', 'categories', "
            f"found a {type(data).__name__}"
        )
    for key in ("images", "categories"):
        if key not in data:
            raise ValueError(f"{json_file}: required top-level field {key!r} is missing")
        if not isinstance(data[key], list):
            raise ValueError(f"{json_file}: field {key!r} must be a list, found {type(data[key]).__name__}")
    if not isinstance(data.get("annotations", []), list):
        raise ValueError(f"{json_file}: field 'annotations' must be a list")
    return data


def _categories(data: Dict[str, Any], json_file: str) -> Tuple[List[str], Dict[int, int]]:
    cats = data["categories"]
    for c in cats:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise ValueError(f"{json_file}: category entry {_short(c)} needs 'id' and 'name'")
    cats = sorted(cats, key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{json_file}: duplicate category ids in {ids}")
    return [c["name"] for c in cats], {cid: i for i, cid in enumerate(ids)}


def _clip_xywh_box(bbox: Any, width: int, height: int, json_file: str, ann_id: Any) -> Tuple[List[float], str]:
    """XYWH → XYXY clipped to the image; returns (box, "") or ([], reason it is unusable)."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"{json_file}: annotation id {ann_id} has bbox {bbox!r}; expected [x, y, w, h]")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{json_file}: annotation id {ann_id} has non-numeric bbox {bbox!r}") from e
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return [], "non-finite box"
    if w <= 0 or h <= 0:
        return [], "zero/negative-size box"
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return [], "box outside the image"
    return [x0, y0, x1, y1], ""


def _check_segmentation(segm: Any, json_file: str, ann_id: Any) -> Tuple[Any, int]:
    """The annotation's 'segmentation' without its polygons of fewer than 3 points, and how many those were.

    An odd number of polygon coordinates is an error: pycocotools would drop the last value without a word.
    """
    if isinstance(segm, list):
        if not all(isinstance(p, list) for p in segm):
            raise ValueError(f"{json_file}: annotation id {ann_id}: polygon 'segmentation' must be a list of lists")
        for i, polygon in enumerate(segm):
            if len(polygon) % 2:
                raise ValueError(
                    f"{json_file}: annotation id {ann_id}: polygon {i} of 'segmentation' has {len(polygon)} "
                    "coordinates, an odd number; expected x, y pairs [x0, y0, x1, y1, ...]"
                )
        kept = [p for p in segm if len(p) >= 6]
        return kept, len(segm) - len(kept)
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise ValueError(f"{json_file}: annotation id {ann_id}: RLE 'segmentation' needs 'counts' and 'size'")
        return segm, 0
    raise ValueError(
        f"{json_file}: annotation id {ann_id}: 'segmentation' must be polygons (list) or RLE "
        f"(dict), found {type(segm).__name__}"
    )


def _short(obj: Any, n: int = 80) -> str:
    s = repr(obj)
    return s if len(s) <= n else s[: n - 3] + "..."
