#!/usr/bin/env python
"""Which kept colour edges carry BoxInst's pairwise loss of a ground-truth mask, and what an outline costs.

For the images of a dataset with masks (at native resolution, padded to the mask stride), every GT instance k is
given as a stride-4 mask (its mask sampled where the box masks are sampled) with logits ``±LOGIT``, and the
pairwise term (BoxInst Eq. 5, the training code's own functions) is evaluated on the edges it keeps (colour
similarity ``≥ COLOR_THRESH``, centre inside k's box). An edge only costs when its two cells disagree; each such
edge is put in one class:

- ``mixed border cell``: one of its cells is a mixed-colour cell of k's border (its ``stride``×``stride`` block
  holds pixels of k and of something else, so its averaged colour is a mix);
- ``other instance``: both cells are pure and the cell outside k belongs to another GT instance (touching,
  similar-coloured objects);
- ``background``: both cells are pure and the cell outside k is background coloured like the object.

The same is done for k's *outline*: foreground on k's mixed border cells inside its box, background elsewhere.
It spans the box about as the GT does (the projection term) and, where the border cells keep no edge, costs
nothing. Printed (and written as json with ``--output``): the share of the GT's pairwise loss on disagreeing
edges in each class, overall and by object size (equivalent diameter in cells), and the mean loss per kept edge
and projection term of the GT and of the outline.

    python dev/pairwise_edge_analysis.py --config-file configs/cpu/boxinst_m2f_synthetic_tiny.yaml \\
        --num-images 100 --output output/pairwise_edges.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mask2former_sim.config import get_cfg
from mask2former_sim.data import get_dataset_dicts, register_from_config
from mask2former_sim.data.coco import decode_segmentation, read_image
from mask2former_sim.modeling.losses.boxinst import (
    compute_project_term,
    images_color_similarity,
    pairwise_log_same_prob,
    unfold_wo_center,
)
from mask2former_sim.structures.boxes import boxes_to_stride_masks

logger = logging.getLogger("mask2former_sim.pairwise_edge_analysis")

CLASSES = ("mixed border cell", "other instance", "background")
SIZE_BINS = ((0.0, 6.0), (6.0, 10.0), (10.0, 14.0), (14.0, math.inf))  # equivalent diameter in cells


def _bin_name(lo: float, hi: float) -> str:
    return f">= {lo:g} cells" if math.isinf(hi) else f"{lo:g}-{hi:g} cells"


def instance_edge_costs(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    similarity: torch.Tensor,
    stride: int,
    color_thresh: float,
    kernel_size: int,
    dilation: int,
    logit: float,
) -> List[Dict[str, float]]:
    """Pairwise cost of the GT mask and of the outline of every instance of one image.

    Args:
        masks: (N, Hp, Wp) bool GT masks at input resolution (padded).
        boxes: (N, 4) XYXY boxes in input pixels.
        similarity: (E, Hp/s, Wp/s) colour similarity of the image (``images_color_similarity``).
    Returns:
        per instance ``{"diameter", "kept_edges", "gt_loss", "outline_loss", "gt_proj", "outline_proj"}`` (loss
        sums over kept edges) and the GT loss per class of :data:`CLASSES`.
    """
    hp, wp = masks.shape[-2:]
    off = stride // 2
    cells = masks[:, off::stride, off::stride].float()  # (N, h, w): the labels the box masks would give
    block = F.avg_pool2d(masks[:, None].float(), stride, stride)[:, 0]
    mixed = (block > 0) & (block < 1)  # the block straddles the instance's border
    box_masks = boxes_to_stride_masks(boxes, hp, wp, stride)
    owner = torch.where(cells.any(0), cells.argmax(0), torch.full_like(cells[0], -1, dtype=torch.long))
    owner_nb = unfold_wo_center(owner[None, None].float(), kernel_size, dilation)[0, 0]  # (E, h, w)
    out = []
    for k in range(masks.shape[0]):
        kept = (similarity >= color_thresh) & (box_masks[k][None] > 0)
        label = cells[k]
        label_nb = unfold_wo_center(label[None, None], kernel_size, dilation)[0, 0]
        mixed_nb = unfold_wo_center(mixed[k][None, None].float(), kernel_size, dilation)[0, 0] > 0
        disagree = kept & (label[None] != label_nb)
        gt_cost = -pairwise_log_same_prob((logit * (2 * label - 1))[None], kernel_size, dilation)[0]
        outline = (mixed[k] & (box_masks[k] > 0)).float()
        outline_cost = -pairwise_log_same_prob((logit * (2 * outline - 1))[None], kernel_size, dilation)[0]
        border = disagree & (mixed[k][None] | mixed_nb)
        other_owner = torch.where(label[None] > 0, owner_nb, owner[None].float().expand_as(owner_nb))
        other = disagree & ~border & (other_owner >= 0) & (other_owner != k)
        background = disagree & ~border & ~other
        area = float(label.sum())
        row = {
            "diameter": 2.0 * math.sqrt(area / math.pi),
            "kept_edges": float(kept.sum()),
            "gt_loss": float((gt_cost * kept).sum()),
            "gt_disagreeing_loss": float((gt_cost * disagree).sum()),
            "outline_loss": float((outline_cost * kept).sum()),
            "gt_proj": float(compute_project_term(label[None], box_masks[k][None])[0]),
            "outline_proj": float(compute_project_term(outline[None], box_masks[k][None])[0]),
        }
        for name, sel in zip(CLASSES, (border, other, background)):
            row[name] = float((gt_cost * sel).sum())
        out.append(row)
    return out


def image_inputs(d: Dict[str, Any], stride: int):
    """(1, 3, Hp, Wp) float image, (1, Hp, Wp) valid mask, (N, Hp, Wp) masks and (N, 4) XYXY boxes."""
    image = torch.from_numpy(read_image(d["file_name"]).copy()).permute(2, 0, 1).float()
    h, w = image.shape[-2:]
    hp, wp = int(math.ceil(h / stride) * stride), int(math.ceil(w / stride) * stride)
    padded = image.new_zeros(1, 3, hp, wp)
    padded[0, :, :h, :w] = image
    valid = torch.zeros(1, hp, wp, dtype=torch.bool)
    valid[0, :h, :w] = True
    anns = [a for a in d["annotations"] if not a.get("iscrowd", 0) and "segmentation" in a]
    masks = torch.zeros(len(anns), hp, wp, dtype=torch.bool)
    for i, a in enumerate(anns):
        masks[i, :h, :w] = torch.from_numpy(decode_segmentation(a["segmentation"], h, w).astype(bool))
    boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return padded, valid, masks, boxes


def summarise(rows: Sequence[Dict[str, float]]) -> Dict[str, Any]:
    """Shares of the GT pairwise loss per edge class (overall and per size bin) and GT vs outline costs."""

    def block(sel: Sequence[Dict[str, float]]) -> Dict[str, Any]:
        total = sum(r["gt_disagreeing_loss"] for r in sel)
        edges = sum(r["kept_edges"] for r in sel)
        return {
            "instances": len(sel),
            "share": {c: (sum(r[c] for r in sel) / total if total > 0 else float("nan")) for c in CLASSES},
            "gt_loss_per_edge": sum(r["gt_loss"] for r in sel) / edges if edges else float("nan"),
            "outline_loss_per_edge": sum(r["outline_loss"] for r in sel) / edges if edges else float("nan"),
            "gt_projection": float(np.mean([r["gt_proj"] for r in sel])) if sel else float("nan"),
            "outline_projection": float(np.mean([r["outline_proj"] for r in sel])) if sel else float("nan"),
        }

    by_size = {_bin_name(lo, hi): block([r for r in rows if lo <= r["diameter"] < hi]) for lo, hi in SIZE_BINS}
    return {"all": block(rows), "by_size": by_size}


def format_table(summary: Dict[str, Any]) -> str:
    head = [
        "objects",
        "instances",
        *[f"share: {c}" for c in CLASSES],
        "GT loss/edge",
        "outline loss/edge",
        "GT proj",
        "outline proj",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, b in [("all", summary["all"]), *summary["by_size"].items()]:
        cells = [
            name,
            str(b["instances"]),
            *[f"{100 * b['share'][c]:.0f}%" for c in CLASSES],
            f"{b['gt_loss_per_edge']:.3f}",
            f"{b['outline_loss_per_edge']:.3f}",
            f"{b['gt_projection']:.3f}",
            f"{b['outline_projection']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="config whose MODEL.BOXINST keys and data are used")
    parser.add_argument("--dataset", default="", help="registered dataset with masks (default: DATASETS.TRAIN[0])")
    parser.add_argument("--num-images", type=int, default=100, help="first N images of the dataset")
    parser.add_argument("--logit", type=float, default=6.0, help="GT and outline masks as ±LOGIT logits")
    parser.add_argument("--output", default="", help="json file for the summary and per-instance rows")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = get_cfg(args.config_file, args.opts)
    register_from_config(cfg)
    bi = cfg.MODEL.BOXINST
    stride, pw = bi.MASK_STRIDE, bi.PAIRWISE
    name = args.dataset or cfg.DATASETS.TRAIN[0]
    rows: List[Dict[str, float]] = []
    for d in get_dataset_dicts(name)[: args.num_images]:
        image, valid, masks, boxes = image_inputs(d, stride)
        if masks.shape[0] == 0:
            continue
        similarity = images_color_similarity(image, valid, stride, pw.SIZE, pw.DILATION, pw.THETA)[0]
        rows += instance_edge_costs(masks, boxes, similarity, stride, pw.COLOR_THRESH, pw.SIZE, pw.DILATION, args.logit)
    summary = summarise(rows)
    logger.info(
        "%s, %d images, %d instances (stride %d, COLOR_THRESH %g, logits ±%g):\n%s",
        name,
        min(args.num_images, len(get_dataset_dicts(name))),
        len(rows),
        stride,
        pw.COLOR_THRESH,
        args.logit,
        format_table(summary),
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"dataset": name, "summary": summary, "instances": rows}, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
