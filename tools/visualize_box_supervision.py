"""See what the BoxInst-M2F losses see: box masks, kept colour-similarity edges and matched predicted masks.

For the first ``--num-images`` training images, the real training mapper runs in box mode, the model's own
training forward builds the targets (``MaskFormer.matched_targets``: what the criterion gets, so nothing here
re-implements them) and the criterion's matcher pairs queries with GT boxes on the final head. Per image, in
``--output``::

    <k>_<image_id>_boxes.png       the padded network input with the GT boxes (padding darkened)
    <k>_<image_id>_box_masks.png   the stride-4 box masks the projection term compares with
    <k>_<image_id>_edges.png       per stride-4 pixel inside a GT box, how many of its neighbour edges have colour
                                   similarity >= MODEL.BOXINST.PAIRWISE.COLOR_THRESH (the pairwise term's edges),
                                   black = none, yellow = all 8
    <k>_<image_id>_pred_masks.png  the matched queries' masks (sigmoid > 0.5) with their GT boxes

Example::

    python tools/visualize_box_supervision.py --config-file configs/cpu/boxinst_m2f_synthetic_tiny.yaml \\
        --num-images 4 --output output/box_vis --weights output/boxinst_m2f_synthetic_tiny/model_final.pth

Without ``--weights`` the predictions come from the freshly built model (pretrained backbone, random heads).
Configs in "mask" or "sim" supervision are drawn in "box" mode (SIM adds copy-paste and pseudo masks on top of
the same box targets; this tool shows the box part).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mask2former_sim.config import get_cfg
from mask2former_sim.data import InstanceDatasetMapper, get_dataset_dicts, get_metadata, register_from_config
from mask2former_sim.engine import load_checkpoint_file, load_model_weights
from mask2former_sim.modeling import build_model
from mask2former_sim.modeling.meta_arch import apply_loss_weights
from mask2former_sim.modeling.targets import ImageTarget, Targets
from mask2former_sim.utils.visualizer import class_name, draw_instances_on_image, save_image

logger = logging.getLogger("mask2former_sim.visualize_box_supervision")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PNGs of what the BoxInst-M2F losses see on training images")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a config YAML")
    parser.add_argument("--num-images", type=int, default=4, help="how many training images to draw")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the PNGs")
    parser.add_argument("--weights", default="", metavar="FILE", help="model checkpoint (default: untrained)")
    parser.add_argument("--dataset", default="", help="registered dataset (default: the first DATASETS.TRAIN)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training augmentations")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def setup_cfg(args: argparse.Namespace):
    cfg = get_cfg(args.config_file, args.opts)
    if cfg.MODEL.MASK_FORMER.SUPERVISION != "box":
        logger.info(
            "%s has SUPERVISION %r; drawing what box supervision sees",
            args.config_file,
            cfg.MODEL.MASK_FORMER.SUPERVISION,
        )
        cfg.MODEL.MASK_FORMER.SUPERVISION = "box"
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    register_from_config(cfg)
    return cfg


def capture_targets(
    model: torch.nn.Module, inputs: List[Dict[str, Any]], iteration: int
) -> Tuple[Dict[str, Any], Targets]:
    """The outputs and targets of the model's training forward (no gradients; ``MaskFormer.matched_targets``, what
    its criterion gets), with the weighted losses of the final head logged."""
    with torch.no_grad():
        batch, targets = model.matched_targets(inputs, iteration)
        losses = apply_loss_weights(
            model.criterion(batch.outputs, targets, batch.indices, iteration), model.criterion.weight_dict
        )
    final = sorted((k, v.item()) for k, v in losses.items() if not k[-1].isdigit())  # final head only
    logger.info(
        "weighted losses of the final head at iteration %d (pairwise warm-up applied): %s",
        iteration,
        ", ".join(f"{k} {v:.3f}" for k, v in final),
    )
    return batch.outputs, targets


def kept_edge_count(target: ImageTarget, color_thresh: float) -> np.ndarray:
    """(h, w) int: at each stride-4 pixel inside a GT box, the number of neighbour edges the pairwise term keeps."""
    kept = (target["color_similarity"] >= color_thresh).sum(0)  # (h, w)
    inside = target["box_masks"].amax(0) > 0 if len(target["box_masks"]) else torch.zeros_like(kept, dtype=bool)
    return (kept * inside).cpu().numpy().astype(np.int64)


def upsample(stride_map: np.ndarray, stride: int) -> np.ndarray:
    return np.repeat(np.repeat(stride_map, stride, axis=-2), stride, axis=-1)


def edges_image(canvas: np.ndarray, count: np.ndarray, inside: np.ndarray, num_edges: int, stride: int) -> np.ndarray:
    """Heat map of ``count / num_edges`` (inferno: black 0, yellow all) inside the boxes, dimmed image outside."""
    heat = cv2.applyColorMap((upsample(count, stride) * (255 // num_edges)).astype(np.uint8), cv2.COLORMAP_INFERNO)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return np.where(inside[..., None], heat, (canvas * 0.35).astype(np.uint8))


def draw_image(
    k: int,
    inp: Dict[str, Any],
    outputs: Dict[str, Any],
    target: ImageTarget,
    indices,
    cfg,
    names: Optional[Sequence[str]],
    output_dir: str,
) -> Dict[str, Any]:
    stride = cfg.MODEL.BOXINST.MASK_STRIDE
    hp, wp = target["padding_mask"].shape
    canvas = np.zeros((hp, wp, 3), dtype=np.uint8)
    image = inp["image"].permute(1, 2, 0).numpy()
    canvas[: image.shape[0], : image.shape[1]] = image
    padding = target["padding_mask"].cpu().numpy()
    canvas[padding] = canvas[padding] // 3
    boxes = target["boxes"].cpu().numpy()
    labels = [class_name(int(c), names) for c in target["labels"].tolist()]
    box_masks = upsample(target["box_masks"].cpu().numpy() > 0, stride)
    count = kept_edge_count(target, cfg.MODEL.BOXINST.PAIRWISE.COLOR_THRESH)
    num_edges = target["color_similarity"].shape[0]

    src, gt = (i.cpu() for i in indices)
    order = torch.argsort(gt)
    src, gt = src[order], gt[order]
    logits = outputs["pred_masks"][0, src][None].float()
    pred = F.interpolate(logits, size=(hp, wp), mode="bilinear", align_corners=False)[0].sigmoid() > 0.5
    pred_labels = [f"q{q} {class_name(int(target['labels'][g]), names)}" for q, g in zip(src.tolist(), gt.tolist())]

    stem = os.path.join(output_dir, f"{k}_{inp['image_id']}")
    panels = {
        "boxes": draw_instances_on_image(canvas, None, boxes, labels),
        "box_masks": draw_instances_on_image(canvas, box_masks, None, labels),
        "edges": draw_instances_on_image(
            edges_image(canvas, count, box_masks.any(0), num_edges, stride), None, boxes, labels
        ),
        "pred_masks": draw_instances_on_image(canvas, pred.cpu().numpy(), boxes[gt.numpy()], pred_labels),
    }
    paths = {}
    for name, picture in panels.items():
        paths[name] = f"{stem}_{name}.png"
        save_image(picture, paths[name])
    return {
        "image_id": inp["image_id"],
        "paths": paths,
        "kept_edges": count,
        "boxes": boxes,
        "padding_mask": padding,
        "matches": list(zip(src.tolist(), gt.tolist())),
    }


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Write the PNGs; returns one record per image (paths, kept-edge counts, boxes, padding, matches)."""
    args = get_parser().parse_args(argv)
    cfg = setup_cfg(args)
    dataset = args.dataset or cfg.DATASETS.TRAIN[0]
    dicts = [d for d in get_dataset_dicts(dataset) if d["annotations"]][: args.num_images]
    if not dicts:
        raise ValueError(f"dataset '{dataset}' has no image with annotations to draw")
    names = get_metadata(dataset).get("thing_classes")
    mapper = InstanceDatasetMapper.from_config(cfg)
    model = build_model(cfg)
    iteration = 0
    if args.weights:
        load_model_weights(model, args.weights)
        checkpoint = load_checkpoint_file(args.weights, allow_pickle=True)
        iteration = int(checkpoint.get("iteration", 0)) if isinstance(checkpoint, dict) else 0  # warm-up as trained
    model.train()  # the training forward builds the targets; with no_grad nothing is updated but BN statistics
    matcher = model.criterion.matcher
    os.makedirs(args.output, exist_ok=True)
    records = []
    for k, d in enumerate(dicts):
        inp = mapper(d, np.random.default_rng(args.seed + k))
        outputs, targets = capture_targets(model, [inp], iteration)
        final_head = {"pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"]}
        indices = matcher(final_head, targets)[0]
        records.append(draw_image(k, inp, final_head, targets[0], indices, cfg, names, args.output))
        box_pixels = int(targets[0]["box_masks"].amax(0).sum()) if len(targets[0]["boxes"]) else 0
        edges = box_pixels * targets[0]["color_similarity"].shape[0]
        kept = int(records[-1]["kept_edges"].sum())
        logger.info(
            "image %s: %d boxes, %d of the %d edges inside them kept (%.0f%%), PNGs %s",
            d["image_id"],
            len(targets[0]["boxes"]),
            kept,
            edges,
            100.0 * kept / max(edges, 1),
            f"{args.output}/{k}_{d['image_id']}_*.png",
        )
    return records


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
