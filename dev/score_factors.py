#!/usr/bin/env python
"""Which factor of Mask2Former's instance score ranks a model's detections: AP with the score as the model gives it
(class probability × mean mask probability inside the mask), with the class probability alone, with the mask
score alone, and with an oracle score (each detection's best mask IoU with a GT of its image; copies of one
instance share that IoU and rank together, so a model's duplicates pull this AP down); how well each score follows
that IoU (Spearman's rho over all detections); and how many confident detections match no ground truth.

    python dev/score_factors.py --config-file configs/cpu/boxinst_m2f_cats_lite0.yaml \\
        --weights output/run/model_final.pth [--dataset feral_cats_val] [--output scores.json]

Runs the model's own inference on every test image (the same detections as evaluation) and evaluates the three
scorings with the project's pycocotools evaluator. "Confident" detections score at least ``--confident`` (0.5)
with the model's score; a false positive there overlaps no GT of its image with mask IoU ≥ 0.5, a duplicate
overlaps a higher-scoring detection with mask IoU ≥ 0.5.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Dict, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from scipy.stats import spearmanr

from mask2former_sim.config import get_cfg
from mask2former_sim.data import build_test_loader, get_dataset_dicts, get_metadata, register_from_config
from mask2former_sim.data.coco import segmentation_to_rle
from mask2former_sim.engine import load_model_weights
from mask2former_sim.evaluation import COCOEvaluator
from mask2former_sim.modeling import build_model
from mask2former_sim.modeling.postprocessing import instances_at_size, topk_queries

logger = logging.getLogger("mask2former_sim.score_factors")

SCORINGS = ("model", "class", "mask", "oracle")
MASK_SCORE_QUANTILES = (0.1, 0.5, 0.9)  # quantiles of the mask score reported over all detections


@torch.inference_mode()
def detections(model, x: Dict) -> Dict[str, torch.Tensor]:
    """The model's instances of one input (as ``model.inference``) with ``class_scores`` and ``mask_scores``."""
    images, sizes = model.preprocess_images([x])
    outputs = model.forward_network(images, all_heads=False)
    class_scores, labels, queries = topk_queries(outputs["pred_logits"][0], model.test_topk)
    output_size = (int(x.get("height", sizes[0][0])), int(x.get("width", sizes[0][1])))
    inst = instances_at_size(
        outputs["pred_masks"][0][queries], class_scores, labels, tuple(images.shape[-2:]), sizes[0], output_size
    )
    inst["class_scores"] = class_scores
    inst["mask_scores"] = inst["scores"] / class_scores.clamp_min(1e-12)
    return inst


def _encode(masks: torch.Tensor) -> list:
    return mask_util.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8)))


def best_gt_iou(masks: torch.Tensor, gt_rles: list) -> np.ndarray:
    """Each (N, H, W) mask's largest mask IoU with a GT instance of its image (0 when the image has none)."""
    if masks.shape[0] == 0 or not gt_rles:
        return np.zeros(masks.shape[0])
    ious = np.asarray(mask_util.iou(_encode(masks), gt_rles, [0] * len(gt_rles)))
    return ious.reshape(masks.shape[0], len(gt_rles)).max(axis=1)


def confident_errors(inst: Dict[str, torch.Tensor], gt_rles: list, threshold: float) -> Dict[str, int]:
    """Confident detections, and those that match no GT (IoU < 0.5) or duplicate a higher-scoring one."""
    keep = inst["scores"] >= threshold
    masks = inst["pred_masks"][keep]
    if masks.shape[0] == 0:
        return {"confident": 0, "false_positive": 0, "duplicate": 0}
    rles = _encode(masks)
    to_gt = np.asarray(mask_util.iou(rles, gt_rles, [0] * len(gt_rles))) if gt_rles else np.zeros((len(rles), 0))
    to_gt = to_gt.reshape(len(rles), len(gt_rles))
    order = inst["scores"][keep].argsort(descending=True).tolist()
    between = np.asarray(mask_util.iou(rles, rles, [0] * len(rles))).reshape(len(rles), len(rles))
    duplicates = sum(1 for rank, i in enumerate(order) if any(between[i, j] >= 0.5 for j in order[:rank]))
    false_positives = int((to_gt.max(axis=1, initial=0.0) < 0.5).sum())
    return {"confident": len(rles), "false_positive": false_positives, "duplicate": duplicates}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--dataset", default="", help="registered dataset (default: DATASETS.TEST[0])")
    parser.add_argument("--confident", type=float, default=0.5, help="model score of a confident detection")
    parser.add_argument("--output", default="", help="json file for the summary")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = get_cfg(args.config_file, ["MODEL.WEIGHTS", args.weights] + list(args.opts))
    register_from_config(cfg)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    model = build_model(cfg, training=False)
    load_model_weights(model, args.weights)
    model.eval()
    meta = get_metadata(dataset)
    evaluators = {
        s: COCOEvaluator(
            meta["json_file"],
            max_dets=list(cfg.TEST.MAX_DETS),
            dataset_id_map=meta["thing_dataset_id_to_contiguous_id"],
        )
        for s in SCORINGS
    }
    gt = {d["image_id"]: d for d in get_dataset_dicts(dataset)}
    counts = {"confident": 0, "false_positive": 0, "duplicate": 0, "gt": 0}
    per_detection: Dict[str, list] = {s: [] for s in SCORINGS}
    for batch in build_test_loader(cfg, dataset):
        x = batch[0]
        inst = detections(model, x)
        d = gt[x["image_id"]]
        gt_rles = [segmentation_to_rle(a["segmentation"], d["height"], d["width"]) for a in d["annotations"]]
        oracle = torch.as_tensor(best_gt_iou(inst["pred_masks"], gt_rles), dtype=inst["scores"].dtype)
        base = {k: inst[k] for k in ("pred_masks", "pred_boxes", "pred_classes")}
        for scoring, scores in zip(SCORINGS, (inst["scores"], inst["class_scores"], inst["mask_scores"], oracle)):
            evaluators[scoring].process([x], [{"instances": {**base, "scores": scores}}])
            per_detection[scoring].append(scores.numpy())
        counts["gt"] += len(gt_rles)
        for key, value in confident_errors(inst, gt_rles, args.confident).items():
            counts[key] += value
    values = {s: np.concatenate(v) if v else np.zeros(0) for s, v in per_detection.items()}
    summary = {
        "segm": {},
        "bbox": {},
        "confident_detections": counts,
        "spearman_with_iou": {
            s: float(spearmanr(values[s], values["oracle"])[0]) if len(values[s]) > 1 else float("nan")
            for s in SCORINGS[:-1]
        },
        "mask_score_quantiles": {
            str(q): float(np.quantile(values["mask"], q)) if len(values["mask"]) else float("nan")
            for q in MASK_SCORE_QUANTILES
        },
    }
    for scoring, evaluator in evaluators.items():
        results = evaluator.evaluate()
        for task in ("segm", "bbox"):
            summary[task][scoring] = {k: results[task][k] for k in ("AP", "AP50", "AP75")}
    print(json.dumps(summary, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
