"""Synthetic instance-segmentation data in COCO format, the default data set of the quick start.

Each image has a textured background (stripes, checks, smooth noise or a gradient, plus pixel noise) and a
few objects of four classes with distinct shapes (disc, square, triangle, ring; squares are striped).
Same-class objects are often placed touching or overlapping a previous one and then usually share its
colour, so only the shape separates them. Later objects occlude earlier ones and each mask is the visible
part; a placement that would leave an earlier object nearly hidden is redrawn. ``color_similarity`` moves
object colours towards the background mean (0 = distinct, 1 = the same colour). The built-in
``synthetic_flat`` variant is the control case of box supervision: one-colour backgrounds, flat objects
40-80 px wide with mutually distinct colours, no stripes, no pixel noise and no touching, so that colour
similarity separates objects exactly as BoxInst's pairwise term assumes.

Images are PNG, annotations COCO json with compressed-RLE masks, ``bbox`` the tight box of the visible mask.
Every image is drawn from its own generator seeded by ``(seed, split, index)``: the output is byte-identical
for a seed. Output layout: ``<out>/annotations/instances_{train,val}.json``, ``<out>/{train,val}/*.png``,
``<out>/generation.json`` (the parameters).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

logger = logging.getLogger(__name__)

CLASSES = ("disc", "square", "triangle", "ring")
_SPLITS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator parameters (all defaults give the quick-start set)."""

    num_train: int = 400  # training images
    num_val: int = 50  # validation images
    size: int = 128  # image side in pixels (square images)
    seed: int = 0  # base seed; image i of a split uses (seed, split, i)
    color_similarity: float = 0.2  # 0: object colours far from the background ... 1: equal to its mean
    min_objects: int = 2  # objects attempted per image, lower bound
    max_objects: int = 6  # objects attempted per image, upper bound
    # object radius range as a fraction of the image side: 28–56 px wide at 128 px, i.e. 7–14 cells of the
    # stride-4 masks, so that objects have interiors at the masks' resolution (0.07–0.15 gave 4–9 cells)
    min_radius: float = 0.11
    max_radius: float = 0.22
    min_noise: float = 2.0  # per-image std range of the Gaussian pixel noise (0–255 scale)
    max_noise: float = 6.0
    touch_prob: float = 0.5  # probability that an object is placed touching/overlapping a same-class one
    share_color_prob: float = 0.7  # probability that such a neighbour takes the same colour
    min_visible_fraction: float = 0.4  # an earlier object must keep this fraction of its area visible
    min_area_fraction: float = 0.002  # smallest visible area kept, as a fraction of the image area
    background: str = "textured"  # "textured" (stripes, checks, smooth noise or a gradient) or "flat" (one colour)
    square_stripes: bool = True  # squares painted with stripes (tone 0.7, period 6 px); False: flat like the rest
    min_color_distance: float = 0.0  # an object's colour at least this far (RGB) from every earlier object's


BUILTIN_SYNTHETIC: Dict[str, SyntheticConfig] = {
    "synthetic": SyntheticConfig(),
    "synthetic_lowcontrast": SyntheticConfig(seed=1, color_similarity=0.8),
    # the control set where BoxInst's assumption holds (similar colour <=> same object): flat-coloured objects
    # 40-80 px wide on a flat background, no stripes, no pixel noise, no touching, distinct colours
    "synthetic_flat": SyntheticConfig(
        seed=2,
        min_objects=1,
        max_objects=4,
        min_radius=20 / 128,
        max_radius=40 / 128,
        min_noise=0.0,
        max_noise=0.0,
        touch_prob=0.0,
        background="flat",
        square_stripes=False,
        min_color_distance=90.0,
    ),
}


def shape_mask(cls: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Inside-test of class ``cls`` at object-frame coordinates ``(u, v)`` (rotated, centred), radius ``r``.

    disc: ``u² + v² ≤ r²``; square: ``max(|u|, |v|) ≤ 0.8 r``; triangle: equilateral, circumradius ``1.2 r``
    (three half-planes at distance ``0.6 r``); ring: ``0.55 r ≤ √(u² + v²) ≤ r``.
    """
    d2 = u * u + v * v
    if cls == 0:
        return d2 <= r * r
    if cls == 1:
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if cls == 2:
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            a = np.pi / 2 + k * 2 * np.pi / 3
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.6 * r
        return inside
    return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)


def render_image(cfg: SyntheticConfig, rng: np.random.Generator) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """One image ``(S, S, 3)`` uint8 and its instances ``[(class, visible bool mask (S, S))]``."""
    s = cfg.size
    if cfg.background not in ("textured", "flat"):
        raise ValueError(f"SyntheticConfig.background must be 'textured' or 'flat', got {cfg.background!r}")
    image, bg_mean = _background(rng, s, cfg.background == "flat")
    labels = np.full((s, s), -1, dtype=np.int32)
    objects: List[Dict[str, Any]] = []
    visible: List[int] = []
    min_area = max(cfg.min_area_fraction * s * s, 4.0)
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        for _attempt in range(10):
            obj = _propose(cfg, rng, objects, bg_mean, s)
            win, u, v = _object_window(obj, s)
            full = shape_mask(obj["cls"], u, v, obj["r"])
            if full.sum() < max(min_area, 0.5 * obj["area"]):
                continue
            covered = labels[win][full]
            lost = np.bincount(covered[covered >= 0], minlength=len(objects))
            left = [vis - int(n) for vis, n in zip(visible, lost)]
            if all(a >= max(min_area, cfg.min_visible_fraction * o["area"]) for a, o in zip(left, objects)):
                labels[win][full] = len(objects)
                _paint(image[win], full, obj, u, v, cfg.square_stripes)
                visible = left + [int(full.sum())]
                objects.append(obj)
                break
    if cfg.max_noise > 0:
        noise = rng.standard_normal(size=image.shape, dtype=np.float32)
        image += noise * np.float32(rng.uniform(cfg.min_noise, cfg.max_noise))
    instances = [(o["cls"], labels == i) for i, o in enumerate(objects)]
    return np.clip(np.round(image), 0, 255).astype(np.uint8), instances


def generate_split(cfg: SyntheticConfig, split: str, out_dir: str) -> Dict[str, Any]:
    """Render the images of ``split`` into ``out_dir/<split>/`` and return its COCO json dict."""
    num = cfg.num_train if split == "train" else cfg.num_val
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    images, annotations = [], []
    for i in range(num):
        rng = np.random.default_rng([cfg.seed, _SPLITS[split], i])
        image, instances = render_image(cfg, rng)
        file_name = f"{split}_{i:06d}.png"
        Image.fromarray(image).save(os.path.join(out_dir, split, file_name), compress_level=1)
        images.append({"id": i + 1, "file_name": file_name, "height": cfg.size, "width": cfg.size})
        for cls, mask in instances:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cls + 1,
                    "segmentation": {"size": [cfg.size, cfg.size], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask.sum()),
                    "bbox": [
                        float(cols[0]),
                        float(rows[0]),
                        float(cols[-1] - cols[0] + 1),
                        float(rows[-1] - rows[0] + 1),
                    ],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"mask2former_sim synthetic {split} split", "generator": asdict(cfg)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)],
    }


def generate_synthetic_dataset(out_dir: str, cfg: SyntheticConfig = SyntheticConfig(), overwrite: bool = False) -> str:
    """Write both splits to ``out_dir`` atomically (a temporary sibling folder renamed into place).

    An existing ``out_dir`` is an error unless ``overwrite``. Returns ``out_dir``.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, "annotations"))
        for split in _SPLITS:
            data = generate_split(cfg, split, tmp)
            with open(os.path.join(tmp, "annotations", f"instances_{split}.json"), "w") as f:
                json.dump(data, f)
        with open(os.path.join(tmp, "generation.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=1)
        if overwrite and os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "synthetic data set (%d train / %d val images, %d px) written to %s in %.1f s",
        cfg.num_train,
        cfg.num_val,
        cfg.size,
        out_dir,
        time.perf_counter() - start,
    )
    return out_dir


def ensure_synthetic_dataset(out_dir: str, variant: str = "synthetic") -> None:
    """Generate the built-in ``variant`` into ``out_dir`` unless it is there (safe across processes).

    A copy made with other generator parameters (an older version of this package) is regenerated.
    """
    recorded = os.path.join(out_dir, "generation.json")
    if os.path.isfile(recorded):
        with open(recorded) as f:
            params = json.load(f)
        if params == asdict(BUILTIN_SYNTHETIC[variant]):
            return
        logger.warning("%s was generated with other parameters (%s); regenerating it", out_dir, recorded)
        generate_synthetic_dataset(out_dir, BUILTIN_SYNTHETIC[variant], overwrite=True)
        return
    if os.path.exists(out_dir):
        raise FileExistsError(
            f"{out_dir} exists but holds no complete synthetic data set (generation.json is "
            f"missing); delete it to regenerate"
        )
    try:
        generate_synthetic_dataset(out_dir, BUILTIN_SYNTHETIC[variant])
    except OSError:
        if not os.path.isfile(os.path.join(out_dir, "generation.json")):
            raise
        logger.info("another process generated %s first", out_dir)


def _background(rng: np.random.Generator, s: int, flat: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Textured (or, with ``flat``, one-colour) background ``(S, S, 3)`` float32 and its mean colour."""
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32)
    c1 = rng.uniform(30, 225, size=3)
    if flat:
        image = np.broadcast_to(c1.astype(np.float32), (s, s, 3)).copy()
        return image, c1
    c2 = np.clip(c1 + rng.choice([-1, 1], size=3) * rng.uniform(25, 70, size=3), 0, 255)
    kind = int(rng.integers(4))
    if kind == 0:
        theta, period = rng.uniform(0, np.pi), rng.uniform(5, 20)
        phase = (xs * np.cos(theta) + ys * np.sin(theta)) / period
        t = (
            (np.sin(2 * np.pi * phase) > 0).astype(np.float32)
            if rng.uniform() < 0.5
            else 0.5 + 0.5 * np.sin(2 * np.pi * phase)
        )
    elif kind == 1:
        cell = rng.uniform(6, 20)
        t = ((np.floor(xs / cell) + np.floor(ys / cell)) % 2).astype(np.float32)
    elif kind == 2:
        coarse = rng.uniform(0, 1, size=(int(rng.integers(3, 9)),) * 2)
        t = (
            np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((s, s), Image.BICUBIC), dtype=np.float32)
            / 255.0
        )
    else:
        theta = rng.uniform(0, 2 * np.pi)
        t = (xs * np.cos(theta) + ys * np.sin(theta)) / s
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = (1 - t)[..., None] * c1 + t[..., None] * c2
    return image.astype(np.float32), image.reshape(-1, 3).mean(axis=0)


def _propose(
    cfg: SyntheticConfig, rng: np.random.Generator, objects: List[Dict[str, Any]], bg_mean: np.ndarray, s: int
) -> Dict[str, Any]:
    """A candidate object: class, centre, radius, rotation, colour (touching a same-class one or free)."""
    if objects and rng.uniform() < cfg.touch_prob:
        anchor = objects[int(rng.integers(len(objects)))]
        r = anchor["r"] * rng.uniform(0.8, 1.2)
        direction = rng.uniform(0, 2 * np.pi)
        dist = (anchor["r"] + r) * rng.uniform(0.75, 1.0)
        cx, cy = anchor["cx"] + dist * np.cos(direction), anchor["cy"] + dist * np.sin(direction)
        cls = anchor["cls"]
        base = anchor["base"] if rng.uniform() < cfg.share_color_prob else _object_colour(rng, bg_mean)
    else:
        r = rng.uniform(cfg.min_radius, cfg.max_radius) * s
        cx, cy = rng.uniform(0, s, size=2)
        cls = int(rng.integers(len(CLASSES)))
        base = _object_colour(rng, bg_mean, [o["base"] for o in objects], cfg.min_color_distance)
    colour = (1 - cfg.color_similarity) * base + cfg.color_similarity * bg_mean
    area = {0: np.pi, 1: 2.56, 2: 0.75 * np.sqrt(3) * 1.44, 3: np.pi * (1 - 0.55**2)}[cls] * r * r
    return {
        "cls": cls,
        "cx": float(cx),
        "cy": float(cy),
        "r": float(r),
        "theta": float(rng.uniform(0, 2 * np.pi)),
        "base": base,
        "colour": colour,
        "area": float(area),
    }


def _object_colour(
    rng: np.random.Generator, bg_mean: np.ndarray, others: Sequence[np.ndarray] = (), min_distance: float = 0.0
) -> np.ndarray:
    """A colour at least 90 (RGB distance) from the background mean and ``min_distance`` from each of
    ``others``, when one is found in 20 draws."""
    colour = rng.uniform(0, 255, size=3)
    for _ in range(20):
        far_from_others = all(np.linalg.norm(colour - o) >= min_distance for o in others) if min_distance else True
        if np.linalg.norm(colour - bg_mean) >= 90 and far_from_others:
            break
        colour = rng.uniform(0, 255, size=3)
    return colour


def _object_window(obj: Dict[str, Any], s: int) -> Tuple[Tuple[slice, slice], np.ndarray, np.ndarray]:
    """The image window that can hold the object, and its pixel centres in the object's rotated frame."""
    reach = 1.3 * obj["r"]
    y0, y1 = int(np.clip(np.floor(obj["cy"] - reach), 0, s)), int(np.clip(np.ceil(obj["cy"] + reach), 0, s))
    x0, x1 = int(np.clip(np.floor(obj["cx"] - reach), 0, s)), int(np.clip(np.ceil(obj["cx"] + reach), 0, s))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs + 0.5 - obj["cx"], ys + 0.5 - obj["cy"]
    c, sn = np.cos(obj["theta"]), np.sin(obj["theta"])
    return (slice(y0, y1), slice(x0, x1)), dx * c + dy * sn, -dx * sn + dy * c


def _paint(
    image: np.ndarray, mask: np.ndarray, obj: Dict[str, Any], u: np.ndarray, v: np.ndarray, square_stripes: bool = True
) -> None:
    """Fill ``mask`` with the object's colour; squares get stripes (tone 0.7) of period 6 px (``square_stripes``)."""
    if obj["cls"] == 1 and square_stripes:
        tone = np.where((np.floor(u / 3.0) % 2) == 0, 1.0, 0.7).astype(np.float32)
        image[mask] = tone[mask][:, None] * obj["colour"]
    else:
        image[mask] = obj["colour"]
