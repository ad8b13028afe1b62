#!/usr/bin/env python
"""How much of a model's segm AP is the shape of its masks, and how much is which objects it finds and how it
ranks them: segm AP of a COCO results json as it is, and with the masks of the detections that found an object
replaced by that object's GT mask.

    python dev/mask_oracle.py --gt instances_val.json \\
        --results masks=output/a/inference/feral_cats_val/coco_instances_results.json \\
                  sim=output/b/inference/feral_cats_val/coco_instances_results.json [--box-iou 0.5] [--json out.json]

A detection found an object when the box of its mask has box IoU ≥ ``--box-iou`` with that object's GT box; it
takes the mask of the GT of highest box IoU (same image and category, crowd regions excluded). Scores, the other
detections and duplicates stay as they are, so the replaced AP scores a model's detection and ranking with perfect
shapes: two models' replaced APs compare what they find, their gap to their own AP what their shapes cost.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # dev/'s shared helpers
from coco_results import named_results, results_parser, segm_ap, write_summary  # noqa: E402

BOX_IOU = 0.5  # a detection whose mask box overlaps a GT box this much found that object (COCO's AP50 rule, on boxes)


def with_gt_masks(gt: COCO, results: List[dict], box_iou: float = BOX_IOU) -> tuple:
    """(results with each finding detection's mask replaced by its GT's mask, number replaced)."""
    gts: Dict[tuple, List[dict]] = defaultdict(list)
    for ann in gt.dataset["annotations"]:
        if not ann.get("iscrowd", 0):
            gts[(ann["image_id"], ann["category_id"])].append(ann)
    out, replaced = [], 0
    for r in results:
        anns = gts.get((r["image_id"], r["category_id"]), [])
        if anns:
            box = mask_util.toBbox(r["segmentation"]).reshape(1, 4)
            overlaps = np.asarray(mask_util.iou(box, np.array([a["bbox"] for a in anns], float), [0] * len(anns)))
            best = int(overlaps.argmax())
            if overlaps.reshape(-1)[best] >= box_iou:
                r = {k: v for k, v in r.items() if k != "bbox"}
                r["segmentation"] = gt.annToRLE(anns[best])
                replaced += 1
        out.append(r)
    return out, replaced


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, object]]:
    parser = results_parser(__doc__.splitlines()[0], gt_help="COCO json with the GT boxes and masks")
    parser.add_argument("--box-iou", type=float, default=BOX_IOU, help="box IoU at which a detection found a GT")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(args.gt)
    named = named_results(parser, args)
    summary: Dict[str, Dict[str, object]] = {}
    print(f"{'model':<14}{'AP':>7}{'AP50':>7}{'AP75':>7}{'AP, GT masks':>14}{'AP50':>7}{'AP75':>7}{'replaced':>10}")
    for name, results in named.items():
        oracle, replaced = with_gt_masks(gt, results, args.box_iou)
        row = summary[name] = {
            "as_given": segm_ap(gt, results),
            "gt_masks": segm_ap(gt, oracle),
            "detections": {"all": len(results), "replaced": replaced},
        }
        a, o = row["as_given"], row["gt_masks"]
        print(
            f"{name:<14}{a['AP']:>7.2f}{a['AP50']:>7.2f}{a['AP75']:>7.2f}"
            f"{o['AP']:>14.2f}{o['AP50']:>7.2f}{o['AP75']:>7.2f}{replaced:>10}"
        )
    write_summary(summary, args.json)
    return summary


if __name__ == "__main__":
    main()
