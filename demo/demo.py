"""Segment images with a trained model and save visualisations plus a predictions.json.

    python demo/demo.py --config-file configs/cpu/<config>.yaml --input images/*.jpg --output out/ \
        --confidence-threshold 0.5 --opts MODEL.WEIGHTS output/model_final.pth

Only instances with score >= --confidence-threshold are drawn and saved. Boxes are the tight boxes of the masks.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from typing import List, Optional, Sequence, Tuple

from mask2former_sim.config import get_cfg
from mask2former_sim.utils.visualizer import draw_instance_predictions, instances_to_json, save_image

logger = logging.getLogger("mask2former_sim.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="mask2former_sim demo: instance segmentation of image files")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a config YAML")
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="image files, directories (their images) or glob patterns, e.g. 'dir/*.jpg'",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="output directory (one PNG per image + predictions.json), or a .png file for one input",
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="keep only instances with score >= this (default 0.5)"
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth MODEL.DEVICE cpu",
    )
    return parser


def expand_inputs(items: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(image paths, problems): directories give their image files, patterns are globbed, files are kept."""
    paths: List[str] = []
    problems: List[str] = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                problems.append(f"{item}: directory has no image files ({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        elif any(c in item for c in "*?["):
            found = sorted(glob.glob(os.path.expanduser(item)))
            if not found:
                problems.append(f"{item}: pattern matches no file")
            paths.extend(found)
        else:
            paths.append(item)
    return paths, problems


def class_names_of(cfg) -> Optional[List[str]]:
    """Class names of cfg.DATASETS.TEST[0] when it is registered and its json is readable, else None."""
    if not cfg.DATASETS.TEST:
        return None
    name = cfg.DATASETS.TEST[0]
    try:
        from mask2former_sim.data.catalog import get_metadata, register_from_config

        register_from_config(cfg)
        return list(get_metadata(name)["thing_classes"])
    except Exception as exc:  # an unregistered name or a json not on this machine: numeric labels are fine
        logger.info("Class names of %r unavailable (%s); labels show class ids.", name, exc)
        return None


def output_paths(inputs: Sequence[str], output: str) -> Tuple[List[str], str]:
    """PNG path per input and the predictions.json path."""
    if output.lower().endswith(IMAGE_EXTENSIONS):
        if len(inputs) != 1:
            raise SystemExit(f"--output {output} is a file name but there are {len(inputs)} inputs; give a directory")
        return [output], os.path.join(os.path.dirname(output) or ".", "predictions.json")
    used = set()
    pngs = []
    for path in inputs:
        stem = os.path.splitext(os.path.basename(path))[0]
        candidate, k = stem, 1
        while candidate in used:
            candidate, k = f"{stem}_{k}", k + 1
        used.add(candidate)
        pngs.append(os.path.join(output, candidate + ".png"))
    return pngs, os.path.join(output, "predictions.json")


def filter_by_score(instances: dict, threshold: float) -> dict:
    keep = instances["scores"] >= threshold
    return {k: v[keep] for k, v in instances.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s]: %(message)s", datefmt="%H:%M:%S")
    cfg = get_cfg(args.config_file, args.opts)
    inputs, problems = expand_inputs(args.input)
    if not inputs:
        logger.error("No input images: %s", "; ".join(problems))
        return 1
    pngs, json_path = output_paths(inputs, args.output)

    from mask2former_sim.data.coco import read_image
    from mask2former_sim.predictor import Predictor

    predictor = Predictor(cfg)
    class_names = class_names_of(cfg)
    records = []
    start = time.perf_counter()
    for k, (path, png) in enumerate(zip(inputs, pngs)):
        try:
            image = read_image(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
            logger.error("Skipping %s: %s", path, exc)
            continue
        t0 = time.perf_counter()
        instances = filter_by_score(predictor(image), args.confidence_threshold)
        save_image(draw_instance_predictions(image, instances, class_names), png)
        record = {"file_name": path, "visualization": png, "height": int(image.shape[0]), "width": int(image.shape[1])}
        record.update(instances_to_json(instances, class_names))
        records.append(record)
        logger.info(
            "[%d/%d] %s: %d instances with score >= %.2f in %.2f s -> %s",
            k + 1,
            len(inputs),
            path,
            len(instances["scores"]),
            args.confidence_threshold,
            time.perf_counter() - t0,
            png,
        )
    os.makedirs(os.path.dirname(json_path) or ".", exist_ok=True)
    with open(json_path, "w") as f:
        json.dump({"confidence_threshold": args.confidence_threshold, "images": records}, f)
    logger.info(
        "Processed %d of %d images in %.1f s; predictions in %s",
        len(records),
        len(inputs),
        time.perf_counter() - start,
        json_path,
    )
    if problems:
        logger.error("%d input(s) could not be processed:\n  %s", len(problems), "\n  ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
