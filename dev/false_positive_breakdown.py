#!/usr/bin/env python
"""Which false positives cost a model its AP50: every detection is matched to the GT instances as COCO does at
IoU 0.5, each false positive is sorted into one kind, and AP50 is recomputed with each kind removed.

    python dev/false_positive_breakdown.py --gt instances_val.json \\
        --results proj=output/a/inference/feral_cats_val/coco_instances_results.json \\
                  pairwise=output/b/inference/feral_cats_val/coco_instances_results.json [--json out.json]

Matching (pycocotools' rule, one class, no crowd regions): per image, detections by decreasing score each take the
unmatched GT of highest mask IoU, if that IoU is at least 0.5. A false positive is

- a duplicate: mask IoU ≥ 0.5 with a GT that is already matched;
- a part: best IoU in [0.1, 0.5) with a GT that some detection of the image matches (half a cat, a head, a cat
  with its neighbour);
- a near miss: best IoU in [0.1, 0.5) with a GT that no detection matches;
- background: best IoU < 0.1 with every GT.

Removing false positives does not change which detections match, so the AP50 gained by removing one kind is that
kind's cost alone. AP50 is COCO's: precision made monotone, read at 101 recall points.
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

MATCH_IOU = 0.5  # COCO's AP50 threshold
BACKGROUND_IOU = 0.1  # below this a false positive touches no GT (TIDE's background threshold)
KINDS = ("duplicate", "part", "near_miss", "background")


def classify_image(pred_rles: list, scores: Sequence[float], gt_rles: list) -> List[str]:
    """``"tp"`` or one of ``KINDS`` for each detection of one image."""
    if not pred_rles:
        return []
    if not gt_rles:
        return ["background"] * len(pred_rles)
    ious = np.asarray(mask_util.iou(pred_rles, gt_rles, [0] * len(gt_rles))).reshape(len(pred_rles), len(gt_rles))
    labels = [""] * len(pred_rles)
    matched = np.zeros(len(gt_rles), dtype=bool)
    for d in np.argsort(-np.asarray(scores, dtype=float), kind="mergesort"):
        free = np.where(matched, -1.0, ious[d])
        g = int(free.argmax())
        if free[g] >= MATCH_IOU:
            matched[g] = True
            labels[d] = "tp"
    for d, label in enumerate(labels):
        if label:
            continue
        g = int(ious[d].argmax())
        if ious[d, g] >= MATCH_IOU:
            labels[d] = "duplicate"
        elif ious[d, g] >= BACKGROUND_IOU:
            labels[d] = "part" if matched[g] else "near_miss"
        else:
            labels[d] = "background"
    return labels


def ap50(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> float:
    """COCO's interpolated AP (101 recall points) of detections ``scores`` with true-positive flags ``is_tp``."""
    if num_gt == 0 or len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(is_tp[order])
    recall = tp / num_gt
    precision = tp / np.arange(1, len(order) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, np.linspace(0.0, 1.0, 101), side="left")
    return float(np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0).mean())


def breakdown(gt: dict, results: List[dict]) -> Dict[str, object]:
    """AP50 as given and with each kind of false positive removed, and the count of each kind (all detections
    and among the ``num_gt`` top-scoring ones)."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    gts: Dict[int, list] = defaultdict(list)
    for a in gt["annotations"]:
        if a.get("iscrowd", 0):
            raise ValueError(f"annotation {a['id']}: crowd regions are not supported by this breakdown")
        gts[a["image_id"]].append(a)
    by_image: Dict[int, List[dict]] = defaultdict(list)
    for r in results:
        if r["image_id"] in sizes:
            by_image[r["image_id"]].append(r)
    scores, labels = [], []
    for image_id, (height, width) in sizes.items():
        dets = by_image.get(image_id, [])
        gt_rles = [segmentation_to_rle(a["segmentation"], height, width) for a in gts.get(image_id, [])]
        labels += classify_image([d["segmentation"] for d in dets], [d["score"] for d in dets], gt_rles)
        scores += [d["score"] for d in dets]
    scores_np, labels_np = np.asarray(scores, dtype=float), np.asarray(labels)
    num_gt = sum(len(v) for v in gts.values())
    is_tp = labels_np == "tp"
    top = labels_np[np.argsort(-scores_np, kind="mergesort")[:num_gt]]
    out: Dict[str, object] = {"gt": num_gt, "ap50": 100 * ap50(scores_np, is_tp, num_gt)}
    out["tp"] = {"all": int(is_tp.sum()), "top": int((top == "tp").sum())}
    for kind in KINDS:
        keep = labels_np != kind
        out[kind] = {
            "all": int((~keep).sum()),
            "top": int((top == kind).sum()),
            "ap50_removed": 100 * ap50(scores_np[keep], is_tp[keep], num_gt),
        }
    out["ap50_all_false_positives_removed"] = 100 * ap50(scores_np[is_tp], is_tp[is_tp], num_gt)
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, object]]:
    parser = results_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    with open(args.gt) as f:
        gt = json.load(f)
    named = named_results(parser, args)
    summary = {name: breakdown(gt, results) for name, results in named.items()}
    print(f"{'model':<14}{'AP50':>7}{'TP top':>8}" + "".join(f"{k + ' top / gain':>24}" for k in KINDS))
    for name, s in summary.items():
        cells = "".join(f"{s[k]['top']:>14} / {s[k]['ap50_removed'] - s['ap50']:+6.2f}" for k in KINDS)
        print(f"{name:<14}{s['ap50']:>7.2f}{s['tp']['top']:>8}{cells}")
    write_summary(summary, args.json)
    return summary


if __name__ == "__main__":
    main()
