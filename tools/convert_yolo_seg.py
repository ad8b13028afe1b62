#!/usr/bin/env python
"""Build COCO instance jsons from a Roboflow YOLOv8-seg export: the feral-cats set (``feral_cats_train`` /
``feral_cats_val``) for users who do not have ``../shared/data``.

Download the export (public domain, as stated by the export) from
https://github.com/pcashman21/feral-cat-segmentation-dataset-and-model at commit
c7cdfa43c095a1f9d1892754bcc201e971e375f1, folder ``feral-cat-segmentation.v1i.yolov8/`` (the same data as
https://universe.roboflow.com/paul-cashman-mxgwb/feral-cat-segmentation/dataset/1, format "YOLOv8"), then::

    python tools/convert_yolo_seg.py --export feral-cat-segmentation.v1i.yolov8 --output datasets/feral-cats
    export M2F_SIM_SHARED_DATA=datasets   # the built-in names read $M2F_SIM_SHARED_DATA/feral-cats

It writes ``<output>/images/`` and ``<output>/annotations/instances_{train,val}.json`` (train from the export's
``train/``, val from ``valid/``; ``--splits`` takes others, e.g. ``test:test``):

- Roboflow names every file ``<photo>_<ext>.rf.<hash>.jpg``. Its train split holds up to 3 augmented copies of each
  photo (exposure ±25 %, salt-and-pepper noise on 5 % of the pixels): one copy per photo is kept, the one with the
  fewest impulse-noise pixels (:func:`impulse_noise_pixels`), copied byte for byte as ``<photo>_<ext>.jpg``.
- A label line is ``class x1 y1 x2 y2 ...`` with coordinates normalised to the image size; the polygon becomes pixel
  coordinates (``x·width``, ``y·height``, 2 decimals), ``bbox`` its extent, ``area`` the pycocotools area of the
  rasterised polygon. Polygons with fewer than 3 points or no area are dropped (counted in the log); a line with an
  odd number of coordinates is an error naming the file and line.
- Categories: the names of ``data.yaml``, YOLO class ``c`` → category id ``c + 1``. Images and annotations are
  numbered from 1 in file-name order.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
from collections import defaultdict
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import yaml
from PIL import Image
from scipy.ndimage import median_filter

logger = logging.getLogger("mask2former_sim.convert_yolo_seg")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
ROBOFLOW_SUFFIX = re.compile(r"\.rf\.[0-9a-fA-F]+$")
IMPULSE_LOW, IMPULSE_HIGH = 16, 240  # a salt or pepper pixel is this dark / bright in every channel ...
IMPULSE_CONTRAST = 64  # ... and differs from its 3x3 median grey level by more than this


def source_name(file_name: str) -> str:
    """The photo a Roboflow file comes from: ``group0003_jpeg.rf.7b0b….jpg`` → ``group0003_jpeg``."""
    return ROBOFLOW_SUFFIX.sub("", os.path.splitext(os.path.basename(file_name))[0])


def impulse_noise_pixels(path: str) -> int:
    """Pixels of the image at ``path`` that look like salt-and-pepper noise: near black or near white in every
    channel and far from the median grey level of their 3×3 neighbourhood."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    grey = rgb.mean(axis=2)
    extreme = (rgb <= IMPULSE_LOW).all(axis=2) | (rgb >= IMPULSE_HIGH).all(axis=2)
    isolated = np.abs(grey - median_filter(grey, size=3)) > IMPULSE_CONTRAST
    return int((extreme & isolated).sum())


def parse_label_file(path: str, width: int, height: int) -> Tuple[List[Tuple[int, List[float]]], int]:
    """The (class, polygon in pixels) of every usable line of a YOLO-seg label file, and the number dropped."""
    instances, dropped = [], 0
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                cls, coords = int(fields[0]), [float(v) for v in fields[1:]]
            except ValueError as err:
                raise ValueError(f"{path}, line {number}: expected 'class x1 y1 x2 y2 ...' numbers ({err})") from None
            if len(coords) % 2:
                raise ValueError(f"{path}, line {number}: {len(coords)} coordinates, expected x y pairs")
            polygon = [round(v * (width if i % 2 == 0 else height), 2) for i, v in enumerate(coords)]
            if len(polygon) < 6 or polygon_area(polygon, width, height) == 0:
                dropped += 1
                continue
            instances.append((cls, polygon))
    return instances, dropped


def polygon_area(polygon: Sequence[float], width: int, height: int) -> int:
    """Pixel area of a polygon rasterised by pycocotools."""
    return int(mask_util.area(mask_util.frPyObjects([list(polygon)], height, width))[0])


def polygon_bbox(polygon: Sequence[float]) -> List[float]:
    """XYWH extent of a polygon."""
    xs, ys = polygon[0::2], polygon[1::2]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def pick_copies(image_dir: str) -> Dict[str, str]:
    """Per source photo, the file name of its least noisy copy in ``image_dir``."""
    copies: Dict[str, List[str]] = defaultdict(list)
    for name in sorted(os.listdir(image_dir)):
        if name.lower().endswith(IMAGE_EXTENSIONS):
            copies[source_name(name)].append(name)
    return {
        photo: min(names, key=lambda n: (impulse_noise_pixels(os.path.join(image_dir, n)), n))
        for photo, names in copies.items()
    }


def convert_split(export: str, split: str, output: str, categories: List[Dict[str, Any]]) -> Dict[str, Any]:
    """COCO json of one split of the export; the kept images are copied to ``<output>/images``."""
    image_dir, label_dir = os.path.join(export, split, "images"), os.path.join(export, split, "labels")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"{image_dir}: no such folder (is {export!r} a YOLOv8 export with a {split}/ split?)")
    kept = pick_copies(image_dir)
    os.makedirs(os.path.join(output, "images"), exist_ok=True)
    images, annotations, dropped = [], [], 0
    for photo in sorted(kept):
        name = kept[photo]
        extension = os.path.splitext(name)[1]
        file_name = photo + extension
        with Image.open(os.path.join(image_dir, name)) as im:
            width, height = im.size
        shutil.copyfile(os.path.join(image_dir, name), os.path.join(output, "images", file_name))
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height, "license": 1})
        label = os.path.join(label_dir, os.path.splitext(name)[0] + ".txt")
        if not os.path.isfile(label):
            continue  # an image without objects
        instances, n_dropped = parse_label_file(label, width, height)
        dropped += n_dropped
        for cls, polygon in instances:
            if not 0 <= cls < len(categories):
                raise ValueError(f"{label}: class {cls} is not in data.yaml's {len(categories)} names")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "segmentation": [polygon],
                    "area": float(polygon_area(polygon, width, height)),
                    "bbox": polygon_bbox(polygon),
                    "iscrowd": 0,
                }
            )
    files = sum(name.lower().endswith(IMAGE_EXTENSIONS) for name in os.listdir(image_dir))
    logger.info(
        "%s: %d files, %d photos kept, %d instances, %d polygons dropped (< 3 points or no area)",
        split,
        files,
        len(images),
        len(annotations),
        dropped,
    )
    return {
        "info": {"description": f"YOLOv8-seg export {os.path.basename(os.path.normpath(export))}, one copy per photo"},
        "licenses": [{"id": 1, "name": "as stated by the export (data.yaml)"}],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def read_categories(export: str) -> List[Dict[str, Any]]:
    path = os.path.join(export, "data.yaml")
    with open(path) as f:
        data = yaml.safe_load(f)
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):  # {0: "cat", ...}
        names = [names[k] for k in sorted(names)]
    if not names:
        raise ValueError(f"{path}: no 'names' list of class names")
    return [{"id": i + 1, "name": str(n)} for i, n in enumerate(names)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="the YOLOv8 export folder (holds data.yaml)")
    parser.add_argument("--output", required=True, help="writes images/ and annotations/ here")
    parser.add_argument("--splits", nargs="+", default=["train:train", "valid:val"], help="export_split:name pairs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    categories = read_categories(args.export)
    os.makedirs(os.path.join(args.output, "annotations"), exist_ok=True)
    for spec in args.splits:
        split, _, name = spec.partition(":")
        coco = convert_split(args.export, split, args.output, categories)
        path = os.path.join(args.output, "annotations", f"instances_{name or split}.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(coco, f)
        os.replace(tmp, path)
        logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
