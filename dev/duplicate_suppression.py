#!/usr/bin/env python
"""How much of a model's AP its duplicate detections cost: segm AP of a COCO results json as it is, and after
greedy mask non-maximum suppression (a detection is dropped when its mask IoU with a higher-scoring detection of
the same image and class is at least ``--iou``). Mask2Former has no NMS; this is a diagnostic, not inference.

    python dev/duplicate_suppression.py --gt instances_val.json \\
        --results proj=output/a/inference/feral_cats_val/coco_instances_results.json pairwise=output/b/... [--iou 0.5]
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


def mask_nms(results: List[dict], iou: float) -> List[dict]:
    """The detections that survive greedy mask NMS within each (image, category), highest score first."""
    groups: Dict[tuple, List[dict]] = defaultdict(list)
    for r in results:
        groups[(r["image_id"], r["category_id"])].append(r)
    kept = []
    for dets in groups.values():
        dets = sorted(dets, key=lambda r: -r["score"])
        rles = [d["segmentation"] for d in dets]
        overlaps = np.asarray(mask_util.iou(rles, rles, [0] * len(rles))).reshape(len(rles), len(rles))
        chosen: List[int] = []
        for i in range(len(dets)):
            if all(overlaps[i, j] < iou for j in chosen):
                chosen.append(i)
        kept += [dets[i] for i in chosen]
    return kept


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Dict[str, float]]]:
    parser = results_parser(__doc__.splitlines()[0])
    parser.add_argument("--iou", type=float, default=0.5, help="mask IoU at which a lower-scoring detection goes")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(args.gt)
    named = named_results(parser, args)
    summary = {}
    for name, results in named.items():
        kept = mask_nms(results, args.iou)
        summary[name] = {
            "as_given": segm_ap(gt, results),
            "after_nms": segm_ap(gt, kept),
            "detections": {"as_given": len(results), "after_nms": len(kept)},
        }
        row = summary[name]
        print(
            f"{name:<14} AP {row['as_given']['AP']:.2f} -> {row['after_nms']['AP']:.2f}  "
            f"AP50 {row['as_given']['AP50']:.2f} -> {row['after_nms']['AP50']:.2f}  "
            f"detections {len(results)} -> {len(kept)}"
        )
    write_summary(summary, args.json)
    return summary


if __name__ == "__main__":
    main()
