#!/usr/bin/env python
"""Question: what do the models of each supervision draw on the same photos? (docs/photos.png)

A grid of one column per image and one row each for the ground truth and every model, drawn by the demo's
visualiser: a picture of how supervision modes differ on the same photos.

    python dev/compare_predictions.py --dataset feral_cats_val --num-images 6 --output docs/photos.png \\
        --model Mask2Former configs/cpu/m2f_cats_lite0.yaml output/m2f/model_final.pth \\
        --model BoxInst-M2F configs/cpu/boxinst_m2f_cats_lite0.yaml output/boxinst/model_final.pth \\
        --model SIM configs/cpu/sim_m2f_cats_lite0.yaml output/sim/model_final.pth

Images are the first ``--num-images`` of the dataset with at least ``--min-instances`` annotations, or the ids of
``--image-ids``. Each model runs through :class:`~mask2former_sim.Predictor` (its config's test resize) and draws the
instances scoring at least ``--confidence-threshold``; every row is labelled on the left.
"""

from __future__ import annotations

import argparse
import logging
from typing import List, Optional, Sequence

import cv2
import numpy as np

from mask2former_sim.config import get_cfg
from mask2former_sim.data import get_dataset_dicts, register_from_config
from mask2former_sim.data.coco import decode_rles, read_image, segmentation_to_rle
from mask2former_sim.predictor import Predictor
from mask2former_sim.utils.visualizer import draw_instance_predictions, draw_instances_on_image, save_image

logger = logging.getLogger("mask2former_sim.compare_predictions")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="registered dataset with GT masks, e.g. feral_cats_val")
    parser.add_argument(
        "--model", nargs=3, action="append", required=True, metavar=("NAME", "CONFIG", "WEIGHTS"), help="a row"
    )
    parser.add_argument("--output", required=True, help="PNG path")
    parser.add_argument("--num-images", type=int, default=6, help="columns")
    parser.add_argument("--image-ids", type=int, nargs="*", default=[], help="these image ids instead")
    parser.add_argument("--min-instances", type=int, default=2, help="skip images with fewer annotations")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="drawn instances score at least this")
    parser.add_argument("--tile", type=int, default=320, help="side of each drawn image in the grid (pixels)")
    return parser


def gt_drawing(d: dict, image: np.ndarray) -> np.ndarray:
    """The GT masks and boxes of a dataset dict drawn on its image."""
    height, width = image.shape[:2]
    anns = [a for a in d["annotations"] if "segmentation" in a]
    rles = [segmentation_to_rle(a["segmentation"], height, width) for a in anns]
    masks = decode_rles(rles, height, width) if rles else np.zeros((0, height, width), bool)
    boxes = np.array([a["bbox"] for a in anns], dtype=float).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return draw_instances_on_image(image, masks.astype(bool), boxes, [""] * len(anns))


def _labelled_row(name: str, tiles: Sequence[np.ndarray], label_width: int) -> np.ndarray:
    height = tiles[0].shape[0]
    label = np.full((height, label_width, 3), 255, np.uint8)
    cv2.putText(label, name, (8, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    gap = np.full((height, 4, 3), 255, np.uint8)
    parts: List[np.ndarray] = [label]
    for tile in tiles:
        parts += [tile, gap]
    return np.concatenate(parts[:-1], axis=1)


def main(argv: Optional[Sequence[str]] = None) -> np.ndarray:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dicts = get_dataset_dicts(args.dataset)
    if args.image_ids:
        by_id = {d["image_id"]: d for d in dicts}
        missing = [i for i in args.image_ids if i not in by_id]
        if missing:
            raise SystemExit(f"--image-ids {missing} are not in {args.dataset}")
        chosen = [by_id[i] for i in args.image_ids]
    else:
        chosen = [d for d in dicts if len(d["annotations"]) >= args.min_instances][: args.num_images]
    images = [read_image(d["file_name"]) for d in chosen]

    def tile(image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, (args.tile, args.tile), interpolation=cv2.INTER_AREA)

    rows = [("GT", [tile(gt_drawing(d, im)) for d, im in zip(chosen, images)])]
    for name, config, weights in args.model:
        cfg = get_cfg(config, ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"])
        register_from_config(cfg)
        predictor = Predictor(cfg)
        drawn = []
        for image in images:
            instances = predictor(image, score_threshold=args.confidence_threshold)
            drawn.append(tile(draw_instance_predictions(image, instances, None)))
        rows.append((name, drawn))
        logger.info("%s: drawn on %d images", name, len(images))
    grid_rows = [_labelled_row(name, tiles, 150) for name, tiles in rows]
    width = grid_rows[0].shape[1]
    gap = np.full((6, width, 3), 255, np.uint8)
    grid = np.concatenate([part for row in grid_rows for part in (row, gap)][:-1], axis=0)
    save_image(grid, args.output)
    logger.info("wrote %s (%d images, image ids %s)", args.output, len(chosen), [d["image_id"] for d in chosen])
    return grid


if __name__ == "__main__":
    main()
