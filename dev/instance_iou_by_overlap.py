#!/usr/bin/env python
"""How well each model's masks fit each ground-truth instance, for instances that overlap another one and for
isolated ones: tells merged neighbours (a loss on the overlapping instances) from masks that leak into the
background (a loss on both).

    python dev/instance_iou_by_overlap.py --gt instances_val.json \\
        --results proj=output/a/inference/feral_cats_val/coco_instances_results.json \\
                  pairwise=output/b/inference/feral_cats_val/coco_instances_results.json [--min-score 0.3]

For every GT instance (not crowd, with a mask) the best mask IoU over the model's predictions on its image that
score at least ``--min-score`` (0 when there is none). An instance "overlaps" when its box intersects the box of
another GT instance of the same image. Prints, per model, the mean best IoU of overlapping and of isolated
instances, and the share of instances whose best IoU is at least 0.5; ``--json`` writes the same numbers.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util

from mask2former_sim.data.coco import segmentation_to_rle

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # dev/'s shared helpers
from coco_results import named_results, results_parser, write_summary  # noqa: E402


def _xyxy(bbox: Sequence[float]) -> np.ndarray:
    x, y, w, h = bbox
    return np.array([x, y, x + w, y + h], dtype=float)


def overlapping_flags(boxes: List[np.ndarray]) -> List[bool]:
    """Whether each XYXY box intersects (with positive area) any other box of the list."""
    flags = []
    for i, a in enumerate(boxes):
        hit = False
        for j, b in enumerate(boxes):
            if i != j and min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]):
                hit = True
                break
        flags.append(hit)
    return flags


def best_ious(gt: dict, results: List[dict], min_score: float) -> List[dict]:
    """One record per usable GT instance: ``{"id", "image_id", "overlaps", "best_iou"}``."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    by_image: Dict[int, List[dict]] = defaultdict(list)
    for r in results:
        if r["score"] >= min_score:
            by_image[r["image_id"]].append(r)
    anns: Dict[int, List[dict]] = defaultdict(list)
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0) and a.get("segmentation"):
            anns[a["image_id"]].append(a)
    records = []
    for image_id, image_anns in sorted(anns.items()):
        height, width = sizes[image_id]
        flags = overlapping_flags([_xyxy(a["bbox"]) for a in image_anns])
        gt_rles = [segmentation_to_rle(a["segmentation"], height, width) for a in image_anns]
        preds = [p["segmentation"] for p in by_image.get(image_id, [])]
        ious = mask_util.iou(preds, gt_rles, [0] * len(gt_rles)) if preds else np.zeros((0, len(gt_rles)))
        best = np.asarray(ious).reshape(len(preds), len(gt_rles)).max(axis=0) if preds else np.zeros(len(gt_rles))
        for a, flag, value in zip(image_anns, flags, best):
            records.append({"id": a["id"], "image_id": image_id, "overlaps": flag, "best_iou": float(value)})
    return records


def summarize(records: List[dict]) -> Dict[str, Dict[str, float]]:
    out = {}
    for group, keep in (("overlapping", True), ("isolated", False), ("all", None)):
        values = np.array([r["best_iou"] for r in records if keep is None or r["overlaps"] == keep])
        out[group] = {
            "instances": int(len(values)),
            "mean_best_iou": float(values.mean()) if len(values) else float("nan"),
            "share_iou_0.5": float((values >= 0.5).mean()) if len(values) else float("nan"),
        }
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Dict[str, float]]]:
    parser = results_parser(__doc__.splitlines()[0])
    parser.add_argument("--min-score", type=float, default=0.3, help="predictions scoring below this are ignored")
    args = parser.parse_args(argv)
    with open(args.gt) as f:
        gt = json.load(f)
    named = named_results(parser, args)
    summary = {name: summarize(best_ious(gt, results, args.min_score)) for name, results in named.items()}
    header = f"{'model':<14}" + "".join(f"{g:>34}" for g in ("overlapping", "isolated", "all"))
    print(header)
    for name, groups in summary.items():
        cells = "".join(
            f"{g['instances']:>8} mean {g['mean_best_iou']:.3f} >=0.5 {g['share_iou_0.5']:.2f}".rjust(34)
            for g in groups.values()
        )
        print(f"{name:<14}{cells}")
    write_summary(summary, args.json)
    return summary


if __name__ == "__main__":
    main()
