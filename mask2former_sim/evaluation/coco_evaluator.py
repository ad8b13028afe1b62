"""COCO instance-segmentation evaluation with pycocotools: segm AP and bbox AP from mask-derived boxes.

Differences from pycocotools' ``summarize()`` that matter for crowded data: ``summarize()`` reads its first
line (AP) at ``maxDets=100`` whatever ``params.maxDets`` holds, so an image with 300 nuclei caps AP even for a
perfect prediction. Here every number is read from ``COCOeval.eval["precision"]`` at the LAST ``maxDets`` entry.

Box-only ground truth (the usual data of a box-supervised model): segm AP is computed over the images whose
annotations all have a ``segmentation`` (a log line states how many); when none has one, only bbox AP is
reported, so a box-only test set never breaks evaluation.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.catalog import get_metadata
from ..structures.boxes import masks_to_boxes
from ..utils import comm
from .evaluator import format_table

logger = logging.getLogger(__name__)

SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_AREA_OF_METRIC = {"AP": "all", "AP50": "all", "AP75": "all", "APs": "small", "APm": "medium", "APl": "large"}


def instances_to_coco_results(
    instances: Mapping[str, torch.Tensor], image_id: int, contiguous_to_dataset_id: Mapping[int, int]
) -> List[Dict[str, Any]]:
    """One image's predictions as COCO result dicts.

    ``instances``: ``pred_masks`` bool (N, H, W), ``scores`` (N,), ``pred_classes`` int64 (N,) contiguous ids,
    ``pred_boxes`` float (N, 4) XYXY (derived from the masks when absent). Boxes are written as XYWH and masks as
    compressed RLE with ``counts`` decoded to ``str`` so the list is JSON-serialisable.
    """
    scores = instances["scores"].detach().cpu()
    num = int(scores.shape[0])
    if num == 0:
        return []
    classes = instances["pred_classes"].detach().cpu().tolist()
    masks = instances["pred_masks"].detach().cpu().bool()
    boxes = instances.get("pred_boxes")
    boxes = masks_to_boxes(masks) if boxes is None else boxes.detach().cpu().float()
    # (N, H, W) -> the (H, W, N) Fortran-order uint8 array pycocotools encodes, in one transposing copy
    rles = mask_util.encode(np.ascontiguousarray(masks.numpy().transpose(0, 2, 1)).view(np.uint8).transpose(2, 1, 0))
    results = []
    for k in range(num):
        if classes[k] not in contiguous_to_dataset_id:
            raise ValueError(
                f"predicted class {classes[k]} of image {image_id} is not a contiguous id of the evaluation "
                f"dataset (expected 0..{len(contiguous_to_dataset_id) - 1})"
            )
        rle = rles[k]
        rle["counts"] = rle["counts"].decode("ascii")
        x1, y1, x2, y2 = boxes[k].tolist()
        results.append(
            {
                "image_id": int(image_id),
                "category_id": int(contiguous_to_dataset_id[classes[k]]),
                "segmentation": rle,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(scores[k]),
            }
        )
    return results


def images_with_masks(coco_gt: COCO) -> set:
    """Ids of the images whose annotations (crowd ones included) all carry a ``segmentation``; an image without
    annotations counts (its false positives are scored)."""
    ids = set(coco_gt.getImgIds())
    for ann in coco_gt.dataset.get("annotations", []):
        if not ann.get("segmentation"):
            ids.discard(ann["image_id"])
    return ids


def average_precision_at(
    coco_eval: COCOeval, iou_thr: Optional[float], area: str, category_index: Optional[int] = None
) -> float:
    """Mean precision of ``coco_eval.eval["precision"]`` (T, R, K, A, M) at the last maxDets entry, in [0, 1].

    ``iou_thr`` None averages over all IoU thresholds (COCO AP); ``category_index`` None averages over the
    categories. Entries of -1 (no ground truth) are ignored; NaN when nothing is left.
    """
    params = coco_eval.params
    precision = coco_eval.eval["precision"]
    area_index = params.areaRngLbl.index(area)
    selected = precision[:, :, :, area_index, len(params.maxDets) - 1]
    if iou_thr is not None:
        selected = selected[np.where(np.isclose(params.iouThrs, iou_thr))[0]]
    if category_index is not None:
        selected = selected[:, :, category_index]
    valid = selected[selected > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


class COCOEvaluator:
    """Collects predictions image by image, then scores them with pycocotools on the main process.

    Usage: ``reset()``, ``process(inputs, outputs)`` per batch (inputs carry ``"image_id"``, outputs are the
    model's ``[{"instances": {...}}]``), ``evaluate()`` → ``{"segm": {...}, "bbox": {...}}`` in percent with
    AP, AP50, AP75, APs, APm, APl and ``AP-<category name>`` (empty dict on non-main processes).
    """

    def __init__(
        self,
        gt_json: str,
        max_dets: Sequence[int] = (1, 10, 100),
        output_dir: Optional[str] = None,
        dataset_id_map: Optional[Mapping[int, int]] = None,
        tasks: Sequence[str] = ("segm", "bbox"),
    ) -> None:
        """
        Args:
            gt_json: COCO instances json holding the ground truth.
            max_dets: COCOeval ``maxDets``, ascending; AP is read at the last entry.
            output_dir: where ``coco_instances_results.json`` is written (None: not written).
            dataset_id_map: json category id → contiguous id; default json ids sorted ascending → 0..K-1.
            tasks: any of "segm", "bbox".
        """
        if not os.path.isfile(gt_json):
            raise FileNotFoundError(f"COCOEvaluator: ground-truth json {gt_json!r} does not exist")
        max_dets = [int(m) for m in max_dets]
        if not max_dets or any(m <= 0 for m in max_dets) or sorted(max_dets) != max_dets:
            raise ValueError(f"max_dets must be ascending positive integers (e.g. [1, 10, 100]); got {max_dets}")
        unknown = set(tasks) - {"segm", "bbox"}
        if unknown:
            raise ValueError(f"COCOEvaluator tasks must be 'segm' and/or 'bbox'; got {sorted(unknown)}")
        with contextlib.redirect_stdout(io.StringIO()):
            self._coco_gt = COCO(gt_json)
        self._gt_json = gt_json
        self._max_dets = max_dets
        self._output_dir = output_dir
        self._tasks = tuple(tasks)
        if dataset_id_map is None:
            dataset_id_map = {cid: i for i, cid in enumerate(sorted(self._coco_gt.getCatIds()))}
        dataset_id_map = {int(k): int(v) for k, v in dataset_id_map.items()}
        if sorted(dataset_id_map.values()) != list(range(len(dataset_id_map))):
            raise ValueError(
                f"dataset_id_map must map onto contiguous ids 0..K-1; got values {sorted(dataset_id_map.values())}"
            )
        missing = set(dataset_id_map) - set(self._coco_gt.getCatIds())
        if missing:
            raise ValueError(f"dataset_id_map names category ids {sorted(missing)} absent from {gt_json}")
        self._contiguous_to_dataset_id = {v: k for k, v in dataset_id_map.items()}
        self._mask_image_ids = images_with_masks(self._coco_gt)
        if "segm" in self._tasks and not self._mask_image_ids:
            logger.info("%s has no segmentation: segm AP needs GT masks, reporting bbox AP only", gt_json)
            self._tasks = tuple(t for t in self._tasks if t != "segm")
        self._predictions: List[Dict[str, Any]] = []

    @classmethod
    def from_config(cls, cfg: Any, dataset_name: str, output_dir: Optional[str] = None) -> "COCOEvaluator":
        """Evaluator for a registered dataset (``mask2former_sim.data.get_metadata``), maxDets from TEST.MAX_DETS."""
        metadata = get_metadata(dataset_name)
        return cls(
            gt_json=metadata["json_file"],
            max_dets=tuple(cfg.TEST.MAX_DETS),
            output_dir=output_dir,
            dataset_id_map=metadata.get("thing_dataset_id_to_contiguous_id"),
        )

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]]) -> None:
        """Store the COCO results of one batch: ``inputs[i]["image_id"]`` with ``outputs[i]["instances"]``."""
        for inp, out in zip(inputs, outputs):
            if "image_id" not in inp:
                raise KeyError(f"COCOEvaluator.process: input dict has no 'image_id' (keys: {sorted(inp)})")
            image_id = int(inp["image_id"])
            self._check_mask_size(out["instances"], image_id)
            results = instances_to_coco_results(out["instances"], image_id, self._contiguous_to_dataset_id)
            self._predictions.append({"image_id": image_id, "instances": results})

    def _check_mask_size(self, instances: Mapping[str, torch.Tensor], image_id: int) -> None:
        if image_id not in self._coco_gt.imgs:
            raise ValueError(f"image_id {image_id} is not an image of {self._gt_json}")
        info = self._coco_gt.imgs[image_id]
        found = tuple(instances["pred_masks"].shape[-2:])
        if instances["pred_masks"].shape[0] and found != (info["height"], info["width"]):
            raise ValueError(
                f"predicted masks of image {image_id} are {found} (H, W) but {self._gt_json} says "
                f"{(info['height'], info['width'])}: inference must return masks at the original image size"
            )

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """Gather all processes' predictions and score them on the main process (others return {})."""
        comm.synchronize()
        gathered = comm.all_gather(self._predictions)
        if not comm.is_main_process():
            return {}
        # a distributed sampler may give an image to two processes (padding): keep its first copy
        by_image: Dict[int, Dict[str, Any]] = {}
        for part in gathered:
            for p in part:
                by_image.setdefault(p["image_id"], p)
        predictions = [by_image[i] for i in sorted(by_image)]
        image_ids = sorted(by_image)
        if len(image_ids) < len(self._coco_gt.getImgIds()):
            logger.warning(
                "Evaluating %d of the %d images of %s (only those processed).",
                len(image_ids),
                len(self._coco_gt.getImgIds()),
                self._gt_json,
            )
        coco_results = [r for p in predictions for r in p["instances"]]
        self._write_results(coco_results)
        logger.info(
            "Evaluating %d predictions on %d images, maxDets %s.", len(coco_results), len(image_ids), self._max_dets
        )
        return {task: self._evaluate_task(task, coco_results, image_ids) for task in self._tasks}

    def _write_results(self, coco_results: List[Dict[str, Any]]) -> None:
        if not self._output_dir:
            return
        os.makedirs(self._output_dir, exist_ok=True)
        path = os.path.join(self._output_dir, "coco_instances_results.json")
        with open(path, "w") as f:
            json.dump(coco_results, f)
        logger.info("Wrote %d predictions to %s", len(coco_results), path)

    def _category_names(self) -> List[str]:
        cats = self._coco_gt.loadCats(self._dataset_ids())
        return [c["name"] for c in cats]

    def _dataset_ids(self) -> List[int]:
        """json category ids in contiguous order."""
        return [self._contiguous_to_dataset_id[i] for i in range(len(self._contiguous_to_dataset_id))]

    def run_cocoeval(
        self, task: str, coco_results: List[Dict[str, Any]], image_ids: Sequence[int]
    ) -> Optional[COCOeval]:
        """Run pycocotools' evaluate + accumulate for ``task``; None when there are no predictions.

        For segm the result boxes are dropped so that pycocotools uses the mask area for the small/medium/large
        split (with a box present, ``loadRes`` takes the box area); for bbox the masks are dropped.
        """
        if not coco_results:
            return None
        drop = "bbox" if task == "segm" else "segmentation"
        results = [{k: copy.deepcopy(v) for k, v in r.items() if k != drop} for r in coco_results]
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = self._coco_gt.loadRes(results)
            coco_eval = COCOeval(self._coco_gt, coco_dt, task)
            coco_eval.params.maxDets = list(self._max_dets)
            coco_eval.params.imgIds = list(image_ids)
            coco_eval.params.catIds = self._dataset_ids()
            coco_eval.evaluate()
            coco_eval.accumulate()
        return coco_eval

    def _evaluate_task(
        self, task: str, coco_results: List[Dict[str, Any]], image_ids: Sequence[int]
    ) -> Dict[str, float]:
        if task == "segm" and len(self._mask_image_ids) < len(self._coco_gt.getImgIds()):
            with_masks = [i for i in image_ids if i in self._mask_image_ids]
            logger.info(
                "segm AP over the %d of %d images whose annotations all have masks (%s)",
                len(with_masks),
                len(image_ids),
                self._gt_json,
            )
            image_ids = with_masks
            coco_results = [r for r in coco_results if r["image_id"] in self._mask_image_ids]
        coco_eval = self.run_cocoeval(task, coco_results, image_ids)
        names = self._category_names()
        if coco_eval is None:
            logger.warning("No predictions: %s AP is 0.", task)
            results = {m: 0.0 for m in SUMMARY_METRICS}
            results.update({f"AP-{name}": 0.0 for name in names})
            return results
        thresholds = {"AP": None, "AP50": 0.5, "AP75": 0.75, "APs": None, "APm": None, "APl": None}
        results = {}
        for metric in SUMMARY_METRICS:
            value = average_precision_at(coco_eval, thresholds[metric], _AREA_OF_METRIC[metric])
            results[metric] = 100.0 * value if not math.isnan(value) else float("nan")
        per_category = []
        for k, name in enumerate(names):
            value = average_precision_at(coco_eval, None, "all", category_index=k)
            results[f"AP-{name}"] = 100.0 * value if not math.isnan(value) else float("nan")
            per_category.append((name, results[f"AP-{name}"]))
        summary = format_table([[f"{results[m]:.3f}" for m in SUMMARY_METRICS]], list(SUMMARY_METRICS))
        logger.info("Evaluation results for %s (maxDets %d):\n%s", task, self._max_dets[-1], summary)
        logger.info("Per-category %s AP:\n%s", task, format_per_category_table(per_category))
        return results


def format_per_category_table(per_category: Sequence[tuple], columns: int = 3) -> str:
    """Text table of (name, AP) pairs, ``columns`` pairs per row (as detectron2 logs it)."""
    cells: List[str] = []
    for name, ap in per_category:
        cells.extend([str(name), f"{ap:.3f}"])
    width = 2 * columns
    rows = [cells[i : i + width] for i in range(0, len(cells), width)]
    if rows:
        rows[-1] = rows[-1] + [""] * (width - len(rows[-1]))
    return format_table(rows, ["category", "AP"] * columns)
