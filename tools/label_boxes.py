#!/usr/bin/env python
"""Turn a box-annotated COCO json into masks with a trained model: a box → mask auto-labeller.

    python tools/label_boxes.py --config-file configs/cpu/sim_m2f_synthetic_tiny.yaml \\
        --weights output/sim_m2f_synthetic_tiny/model_final.pth \\
        --json boxes.json --image-root images/ --output labelled.json [--resume] [--reference masks.json]

Every annotation of ``--json`` keeps its ``id``, ``bbox``, ``category_id`` and other fields and gains
``segmentation`` (compressed RLE at the image size), ``score`` and ``mask_source``: per image, the model's
instances are assigned one-to-one to the GT boxes of their class (Hungarian on the IoU between each instance's
mask-derived box and the GT box); a pair with IoU ≥ ``--min-box-iou`` gives the instance's mask restricted to the
box and its score (``mask_source`` "model"), any other box gets its filled rectangle with score 0
(``mask_source`` "box": no query fits). ``--box-masks`` labels every box with its rectangle without a model (the
floor of any labeller). Sliding-window configs work as in evaluation.

Images are written as they are done to ``<output>.partial.jsonl``; ``--resume`` skips the images already there,
so a run over thousands of images can be interrupted. The json is written atomically at the end, with a
summary of model / box / empty / low-confidence masks. ``--reference`` (a json with the real masks of the same
annotation ids) reports mask AP (pycocotools, the labels as detections with their scores) and the mean and
median mask IoU per annotation.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from mask2former_sim.data.coco import check_image_size, read_image, read_json, segmentation_to_rle
from mask2former_sim.structures.boxes import box_iou, box_raster

logger = logging.getLogger("mask2former_sim.label_boxes")


def xywh_to_xyxy(bboxes: Sequence[Sequence[float]]) -> torch.Tensor:
    boxes = torch.tensor(bboxes, dtype=torch.float32).reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)


def assign_instances(
    gt_boxes: torch.Tensor,
    gt_classes: torch.Tensor,
    pred_boxes: torch.Tensor,
    pred_classes: torch.Tensor,
    min_iou: float,
    class_agnostic: bool = False,
) -> List[Optional[int]]:
    """For each GT box, the predicted instance assigned to it (one-to-one, maximal total box IoU over the pairs
    of the same class), or None when no instance reaches ``min_iou``."""
    matches: List[Optional[int]] = [None] * len(gt_boxes)
    if len(gt_boxes) == 0 or len(pred_boxes) == 0:
        return matches
    iou = box_iou(gt_boxes, pred_boxes.float())
    allowed = iou >= min_iou
    if not class_agnostic:
        allowed &= gt_classes[:, None] == pred_classes[None, :]
    cost = torch.where(allowed, -iou, torch.ones_like(iou)).double().numpy()  # a forbidden pair costs more
    rows, cols = linear_sum_assignment(cost)
    for r, c in zip(rows.tolist(), cols.tolist()):
        if bool(allowed[r, c]):
            matches[r] = c
    return matches


def label_image(
    image_info: Dict[str, Any],
    anns: List[Dict[str, Any]],
    instances: Optional[Dict[str, torch.Tensor]],
    class_index: Dict[int, int],
    min_iou: float,
    class_agnostic: bool = False,
) -> List[Dict[str, Any]]:
    """The annotations of one image with ``segmentation``, ``score`` and ``mask_source`` added.

    ``instances`` are the model's predictions at the image size (None: box masks with score 1 for every
    annotation, the ``--box-masks`` floor).
    """
    height, width = int(image_info["height"]), int(image_info["width"])
    gt_boxes = xywh_to_xyxy([a["bbox"] for a in anns])
    rasters = box_raster(gt_boxes, height, width)
    matches: List[Optional[int]] = [None] * len(anns)
    if instances is not None and len(anns):
        gt_classes = torch.tensor([class_index[a["category_id"]] for a in anns], dtype=torch.int64)
        matches = assign_instances(
            gt_boxes, gt_classes, instances["pred_boxes"], instances["pred_classes"], min_iou, class_agnostic
        )
    out = []
    for ann, raster, match in zip(anns, rasters, matches):
        mask, score, source = raster, 0.0 if instances is not None else 1.0, "box"
        if match is not None:
            restricted = instances["pred_masks"][match].bool() & raster
            if bool(restricted.any()):
                mask, score, source = restricted, float(instances["scores"][match]), "model"
        rle = mask_util.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append({**ann, "segmentation": rle, "score": score, "mask_source": source})
    return out


def _read_partial(path: str) -> Dict[int, List[Dict[str, Any]]]:
    """Images already labelled by an interrupted run (a truncated last line is ignored)."""
    done: Dict[int, List[Dict[str, Any]]] = {}
    if not os.path.isfile(path):
        return done
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            done[int(record["image_id"])] = record["annotations"]
    return done


def summarise(annotations: Sequence[Dict[str, Any]], low_score: float) -> Dict[str, int]:
    """Counts of the labelled annotations by outcome."""
    model = [a for a in annotations if a["mask_source"] == "model"]
    return {
        "annotations": len(annotations),
        "model_masks": len(model),
        "box_masks": len(annotations) - len(model),
        "empty_masks": sum(int(mask_util.area(a["segmentation"])) == 0 for a in annotations),
        "low_confidence": sum(a["score"] < low_score for a in model),
    }


def compare_with_reference(labelled: Dict[str, Any], reference_json: str, max_dets: Sequence[int]) -> Dict[str, Any]:
    """Mask AP of the labelled masks against the reference masks, and per-annotation mask IoU (mean, median)."""
    with open(reference_json) as f:
        reference = json.load(f)
    by_id = {a["id"]: a for a in reference["annotations"]}
    sizes = {im["id"]: (im["height"], im["width"]) for im in reference["images"]}
    ious = []
    for ann in labelled["annotations"]:
        ref = by_id.get(ann["id"])
        if ref is None or not ref.get("segmentation"):
            continue
        h, w = sizes[ann["image_id"]]
        ref_rle = segmentation_to_rle(ref["segmentation"], h, w)
        ious.append(float(mask_util.iou([ann["segmentation"]], [ref_rle], [0])[0, 0]))
    detections = [
        {k: a[k] for k in ("image_id", "category_id", "segmentation", "score")}
        for a in labelled["annotations"]
        if not a.get("iscrowd", 0)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(reference_json)
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(detections), "segm")
        coco_eval.params.maxDets = list(max_dets)
        coco_eval.evaluate()
        coco_eval.accumulate()
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]  # all areas, last maxDets
    ap = float(np.mean(precision[precision > -1])) * 100.0 if (precision > -1).any() else float("nan")
    return {
        "mask_AP": ap,
        "mean_mask_iou": float(np.mean(ious)) if ious else float("nan"),
        "median_mask_iou": float(np.median(ious)) if ious else float("nan"),
        "annotations_compared": len(ious),
    }


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", help="the model's config (not needed with --box-masks)")
    parser.add_argument("--weights", default="", help="checkpoint (default: MODEL.WEIGHTS of the config)")
    parser.add_argument("--json", required=True, help="COCO json whose annotations have boxes")
    parser.add_argument("--image-root", required=True, help="folder of the json's file_name entries")
    parser.add_argument("--output", required=True, help="the labelled json")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run of the same output")
    parser.add_argument("--box-masks", action="store_true", help="label every box with its rectangle (no model)")
    parser.add_argument("--min-box-iou", type=float, default=0.5, help="instance box vs GT box IoU to accept")
    parser.add_argument("--class-agnostic", action="store_true", help="match instances of any class to a box")
    parser.add_argument("--low-score", type=float, default=0.5, help="model masks below this score are counted")
    parser.add_argument("--reference", default="", help="json with the real masks: report mask AP and IoU")
    parser.add_argument("--max-dets", type=int, nargs="+", default=[1, 10, 100], help="COCOeval maxDets")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return parser


def check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every file and folder the arguments name exists (checked before a model is built or an image labelled)."""
    if not os.path.isfile(args.json):
        parser.error(f"--json: file not found: {args.json}")
    if not os.path.isdir(args.image_root):
        parser.error(f"--image-root: folder not found: {args.image_root}")
    if args.reference and not os.path.isfile(args.reference):
        parser.error(f"--reference: file not found: {args.reference}")
    if args.box_masks:
        return
    if not args.config_file:
        parser.error("--config-file is needed to label with a model (or pass --box-masks)")
    if not os.path.isfile(args.config_file):
        parser.error(f"--config-file: file not found: {args.config_file}")
    if args.weights and not os.path.isfile(args.weights):
        parser.error(f"--weights: checkpoint not found: {args.weights}")


def read_boxes_json(json_file: str) -> Dict[str, Any]:
    """The COCO json to label; an empty, malformed or incomplete one exits with a message naming the file."""
    try:
        data = read_json(json_file)
    except (OSError, ValueError) as e:
        raise SystemExit(str(e)) from e
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        found = sorted(data) if isinstance(data, dict) else f"a {type(data).__name__}"
        raise SystemExit(
            f"{json_file} must be a COCO json with 'images', 'annotations' and 'categories'; found {found}"
        )
    return data


def build_predictor(args: argparse.Namespace):
    from mask2former_sim import Predictor
    from mask2former_sim.config import get_cfg

    cfg = get_cfg(args.config_file, list(args.opts))
    if args.weights:
        cfg.MODEL.WEIGHTS = args.weights
    if not cfg.MODEL.WEIGHTS:
        raise SystemExit("give the trained model: --weights FILE (or MODEL.WEIGHTS in the config)")
    if not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise SystemExit(f"MODEL.WEIGHTS of {args.config_file}: checkpoint not found: {cfg.MODEL.WEIGHTS}")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return Predictor(cfg), cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = get_parser()
    args = parser.parse_args(argv)
    check_paths(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = read_boxes_json(args.json)
    class_index = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    predictor = None
    if not args.box_masks:
        predictor, num_classes = build_predictor(args)
        if len(class_index) != num_classes and not args.class_agnostic:
            raise SystemExit(
                f"{args.json} has {len(class_index)} categories but the model {num_classes} classes; "
                "use the json of the training categories or --class-agnostic"
            )
    anns_of: Dict[int, List[Dict[str, Any]]] = {}
    for ann in data["annotations"]:
        anns_of.setdefault(ann["image_id"], []).append(ann)
    partial_path = args.output + ".partial.jsonl"
    done = _read_partial(partial_path) if args.resume else {}
    if not args.resume and os.path.exists(partial_path):
        os.remove(partial_path)
    todo = [im for im in data["images"] if im["id"] not in done]
    logger.info(
        "%d images, %d already labelled, %d annotations", len(data["images"]), len(done), len(data["annotations"])
    )
    with open(partial_path, "a") as partial:
        for info in tqdm(todo, desc="labelling", unit="image"):
            anns = anns_of.get(info["id"], [])
            instances = None
            if predictor is not None and anns:
                path = os.path.join(args.image_root, info["file_name"])
                try:
                    image = read_image(path)
                    check_image_size(image, {**info, "file_name": path})
                except (OSError, ValueError) as e:  # the images done so far are kept for --resume
                    raise SystemExit(f"{args.json}, image id {info['id']}: {e}") from e
                instances = predictor(image)
            labelled = label_image(info, anns, instances, class_index, args.min_box_iou, args.class_agnostic)
            done[info["id"]] = labelled
            partial.write(json.dumps({"image_id": info["id"], "annotations": labelled}) + "\n")
            partial.flush()
    order = {ann["id"]: k for k, ann in enumerate(data["annotations"])}
    annotations = sorted((a for anns in done.values() for a in anns), key=lambda a: order[a["id"]])
    summary = summarise(annotations, args.low_score)
    output = {**data, "annotations": annotations}
    output["info"] = {**data.get("info", {}), "label_boxes": {"weights": args.weights, "summary": summary}}
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(output, f)
    os.replace(tmp, args.output)
    os.remove(partial_path)
    logger.info(
        "labelled %d annotations: %d model masks (%d below score %.2f), %d box masks, %d empty; written to %s",
        summary["annotations"],
        summary["model_masks"],
        summary["low_confidence"],
        args.low_score,
        summary["box_masks"],
        summary["empty_masks"],
        args.output,
    )
    result: Dict[str, Any] = {"summary": summary}
    if args.reference:
        result["reference"] = compare_with_reference(output, args.reference, args.max_dets)
        logger.info(
            "against %s: mask AP %.2f, mask IoU mean %.3f median %.3f (%d annotations)",
            args.reference,
            result["reference"]["mask_AP"],
            result["reference"]["mean_mask_iou"],
            result["reference"]["median_mask_iou"],
            result["reference"]["annotations_compared"],
        )
    return result


if __name__ == "__main__":
    main()
