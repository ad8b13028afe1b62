#!/usr/bin/env python
"""Export the inference network to ONNX at a fixed input size and check it with onnxruntime.

    pip install -r requirements-export.txt
    python tools/export_onnx.py --config-file configs/cpu/sim_m2f_synthetic_tiny.yaml \\
        --weights output/sim_m2f_synthetic_tiny/model_final.pth --size 128 128 --output model.onnx \\
        --check photo1.jpg photo2.jpg

What is exported: the network from a (1, 3, H, W) float RGB image in 0-255 (normalisation included) to
``pred_logits`` (1, Q, K+1) and ``pred_masks`` (1, Q, H/4, W/4) of the last head, with the pure-PyTorch
deformable attention (the CUDA op is not exportable), through PyTorch's TorchScript-based ONNX exporter (opset
17; the graph is traced at one size, so H and W are fixed and must be multiples of
``MODEL.MASK_FORMER.SIZE_DIVISIBILITY``). Not exported: resizing the image to fit H×W (keep the aspect ratio,
pad bottom/right with zeros) and the post-processing (top-k over queries × classes, masks upsampled to the
image, scores, boxes) — :class:`OnnxPredictor` does both in Python with the package's own functions; the
sliding window and the training losses are not part of the export.

``--check`` runs onnxruntime and the eager model on each image and reports, per image, the smallest mask IoU of
matching instances and the largest score difference (the check fails below IoU 0.99 or above 1e-3).
"""

from __future__ import annotations

import argparse
import logging
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mask2former_sim.config import get_cfg
from mask2former_sim.data.coco import read_image
from mask2former_sim.engine import load_model_weights
from mask2former_sim.modeling import build_model
from mask2former_sim.modeling.postprocessing import instances_at_size, topk_queries

logger = logging.getLogger("mask2former_sim.export_onnx")

MIN_MASK_IOU = 0.99  # --check: smallest acceptable mask IoU between onnxruntime and eager instances
MAX_SCORE_DIFF = 1e-3  # --check: largest acceptable score difference


class ExportedNetwork(nn.Module):
    """What goes into the ONNX graph: normalisation, backbone, pixel decoder, transformer decoder (last head)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = (images - self.model.pixel_mean) / self.model.pixel_std
        outputs = self.model.forward_network(x, all_heads=False)
        return outputs["pred_logits"], outputs["pred_masks"]


def fit_to_size(image: np.ndarray, size: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """The image resized to fit (H, W) with its aspect ratio kept, zero-padded bottom/right: a (1, 3, H, W) float
    tensor in 0-255 and the (h, w) of the resized image inside it."""
    height, width = image.shape[:2]
    scale = min(size[0] / height, size[1] / width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()[None]
    resized = F.interpolate(tensor, size=(h, w), mode="bilinear", align_corners=False)
    padded = resized.new_zeros(1, 3, *size)
    padded[:, :, :h, :w] = resized
    return padded, (h, w)


def postprocess(
    logits: torch.Tensor,
    masks: torch.Tensor,
    size: Tuple[int, int],
    resized: Tuple[int, int],
    original: Tuple[int, int],
    topk: int,
) -> Dict[str, torch.Tensor]:
    """The model's instance inference on the network outputs of one image (masks at the original size)."""
    scores, labels, query_idx = topk_queries(logits[0], topk)
    instances = instances_at_size(masks[0][query_idx], scores, labels, size, resized, original)
    instances["query_idx"], instances["class_scores"] = query_idx, scores
    return instances


class OnnxPredictor:
    """Instances of an RGB uint8 image (H, W, 3) from the exported graph, post-processed as the model does."""

    def __init__(self, onnx_path: str, size: Tuple[int, int], topk: int) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.size = tuple(size)
        self.topk = topk

    def __call__(self, image: np.ndarray) -> Dict[str, torch.Tensor]:
        tensor, resized = fit_to_size(image, self.size)
        logits, masks = self.session.run(None, {"images": tensor.numpy()})
        return postprocess(
            torch.from_numpy(logits), torch.from_numpy(masks), self.size, resized, image.shape[:2], self.topk
        )


def export(model: nn.Module, size: Tuple[int, int], path: str, opset: int = 17) -> None:
    """Trace the network at ``size`` and write the ONNX graph to ``path``."""
    network = ExportedNetwork(model).eval()
    example = torch.zeros(1, 3, *size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the fixed shapes the graph is traced with
        torch.onnx.export(
            network,
            (example,),
            path,
            input_names=["images"],
            output_names=["pred_logits", "pred_masks"],
            opset_version=opset,
            dynamo=False,
        )


def compare(onnx_instances: Dict[str, torch.Tensor], eager: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Smallest mask IoU and largest score difference between instances of the same (query, class).

    ``unmatched`` counts the onnxruntime instances without an eager twin whose class probability is not a tie at
    the top-k boundary (within ``MAX_SCORE_DIFF`` of the smallest one kept).
    """
    key = {(int(q), int(c)): i for i, (q, c) in enumerate(zip(eager["query_idx"], eager["pred_classes"]))}
    ious, diffs, unmatched = [], [], 0
    boundary = float(eager["class_scores"].min()) if len(eager["class_scores"]) else 0.0
    pairs = zip(onnx_instances["query_idx"].tolist(), onnx_instances["pred_classes"].tolist())
    for i, (q, c) in enumerate(pairs):
        j = key.get((q, c))
        if j is None:
            unmatched += int(float(onnx_instances["class_scores"][i]) > boundary + MAX_SCORE_DIFF)
            continue
        a, b = onnx_instances["pred_masks"][i], eager["pred_masks"][j]
        union = int((a | b).sum())
        ious.append(1.0 if union == 0 else int((a & b).sum()) / union)
        diffs.append(abs(float(onnx_instances["scores"][i]) - float(eager["scores"][j])))
    return {
        "min_mask_iou": min(ious) if ious else float("nan"),
        "max_score_diff": max(diffs) if diffs else 0.0,
        "instances": len(ious),
        "unmatched": unmatched,
    }


def check(model: nn.Module, onnx_path: str, size: Tuple[int, int], images: Sequence[str], topk: int) -> List[Dict]:
    """Compare onnxruntime with the eager model on each image (same resize, same post-processing)."""
    predictor = OnnxPredictor(onnx_path, size, topk)
    network = ExportedNetwork(model).eval()
    reports = []
    for path in images:
        image = read_image(path)
        tensor, resized = fit_to_size(image, size)
        with torch.no_grad():
            logits, masks = network(tensor)
        eager = postprocess(logits, masks, size, resized, image.shape[:2], topk)
        report = {"image": path, **compare(predictor(image), eager)}
        ok = report["min_mask_iou"] >= MIN_MASK_IOU and report["max_score_diff"] <= MAX_SCORE_DIFF
        report["ok"] = bool(ok and report["unmatched"] == 0)
        reports.append(report)
        logger.info(
            "%s: %d instances, min mask IoU %.4f, max score difference %.2e, %d unmatched: %s",
            path,
            report["instances"],
            report["min_mask_iou"],
            report["max_score_diff"],
            report["unmatched"],
            "OK" if report["ok"] else "MISMATCH",
        )
    return reports


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default="", help="checkpoint (default: the config's MODEL.WEIGHTS)")
    parser.add_argument("--size", type=int, nargs=2, required=True, metavar=("H", "W"), help="fixed input size")
    parser.add_argument("--output", required=True, help="the .onnx file")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--check", nargs="*", default=[], metavar="IMAGE", help="images to compare with eager")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = get_cfg(args.config_file, ["MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.MSDA_IMPL", "pytorch", *args.opts])
    divisor = cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY
    if any(s % divisor for s in args.size):
        parser.error(f"--size {args.size} must be multiples of MODEL.MASK_FORMER.SIZE_DIVISIBILITY = {divisor}")
    model = build_model(cfg, training=False).eval()
    weights = args.weights or cfg.MODEL.WEIGHTS
    if weights:
        load_model_weights(model, weights, strict=True)
    else:
        logger.warning("no weights given: exporting a randomly initialised model")
    size = (args.size[0], args.size[1])
    export(model, size, args.output, args.opset)
    logger.info("exported %s at %dx%d (H x W) to %s", args.config_file, size[0], size[1], args.output)
    reports = check(model, args.output, size, args.check, cfg.TEST.DETECTIONS_PER_IMAGE) if args.check else []
    if reports and not all(r["ok"] for r in reports):
        raise SystemExit(f"onnxruntime differs from the eager model: {reports}")
    return {"onnx": args.output, "checks": reports}


if __name__ == "__main__":
    main()
