"""Segment images, a video or a webcam stream with a trained model; save visualisations and predictions.json.

    python demo/demo.py --config-file configs/cpu/<config>.yaml --input images/*.jpg --output out/ \
        --confidence-threshold 0.5 --opts MODEL.WEIGHTS output/model_final.pth
    python demo/demo.py --config-file CFG --video-input clip.mp4 --output out/ --opts MODEL.WEIGHTS model.pth
    python demo/demo.py --config-file CFG --webcam --max-frames 300 --output out/webcam.mp4 --opts ...

Only instances with score >= --confidence-threshold are drawn and saved, and only their masks are brought to the
image size (memory does not grow with the number of queries). Boxes are the tight boxes of the masks. Video and
webcam frames are written as an MP4 video (OpenCV, ``mp4v``) with the drawn instances; the OpenCV build here has
no window, so the webcam stream is recorded, not shown (stop with Ctrl-C or ``--max-frames``).
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
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="mask2former_sim demo: instance segmentation of images or video")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a config YAML")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        nargs="+",
        help="image files, directories (their images) or glob patterns, e.g. 'dir/*.jpg'",
    )
    source.add_argument("--video-input", metavar="FILE", help="a video file (read with OpenCV)")
    source.add_argument("--webcam", nargs="?", type=int, const=0, metavar="INDEX", help="camera index (default 0)")
    parser.add_argument("--max-frames", type=int, default=0, help="video/webcam: stop after this many frames (0: all)")
    parser.add_argument(
        "--output",
        required=True,
        help="output directory (one PNG per image or one MP4 per video, + predictions.json), or a .png / .mp4 file",
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


def video_output_paths(source: str, output: str) -> Tuple[str, str]:
    """(MP4 path, predictions.json path) for a video or webcam source."""
    if output.lower().endswith(VIDEO_EXTENSIONS):
        return output, os.path.join(os.path.dirname(output) or ".", "predictions.json")
    stem = os.path.splitext(os.path.basename(source))[0] or "webcam"
    return os.path.join(output, stem + ".mp4"), os.path.join(output, "predictions.json")


def run_video(args: argparse.Namespace, predictor, class_names: Optional[List[str]]) -> int:
    """Segment every frame of ``--video-input`` or ``--webcam`` and write the drawn frames as a video."""
    import cv2

    source = args.video_input if args.video_input is not None else args.webcam
    if args.video_input is not None and not os.path.isfile(args.video_input):
        logger.error("Video file not found: %s", args.video_input)
        return 1
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        logger.error("Cannot open %s with OpenCV", f"video {source}" if args.video_input else f"camera {source}")
        return 1
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if 0 < fps < 1000 else 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if args.video_input else 0
    video_path, json_path = video_output_paths(args.video_input or f"webcam{source}", args.output)
    os.makedirs(os.path.dirname(video_path) or ".", exist_ok=True)
    writer = None
    records = []
    start = time.perf_counter()
    try:
        while not args.max_frames or len(records) < args.max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            image = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            instances = predictor(image, args.confidence_threshold)
            drawn = cv2.cvtColor(draw_instance_predictions(image, instances, class_names), cv2.COLOR_RGB2BGR)
            if writer is None:
                writer = cv2.VideoWriter(video_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, drawn.shape[1::-1])
                if not writer.isOpened():
                    raise OSError(f"cannot write video file {video_path} (OpenCV mp4v)")
            writer.write(drawn)
            records.append({"frame": len(records), **instances_to_json(instances, class_names)})
            if len(records) % 25 == 0 or len(records) == total:
                logger.info("frame %d/%s: %d instances", len(records), total or "?", len(instances["scores"]))
    except KeyboardInterrupt:
        logger.info("Interrupted after %d frames", len(records))
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    with open(json_path, "w") as f:
        json.dump({"confidence_threshold": args.confidence_threshold, "video": video_path, "frames": records}, f)
    logger.info("%d frames in %.1f s -> %s, %s", len(records), time.perf_counter() - start, video_path, json_path)
    return 0 if records else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s]: %(message)s", datefmt="%H:%M:%S")
    cfg = get_cfg(args.config_file, args.opts)
    if args.input is None:
        from mask2former_sim.predictor import Predictor

        return run_video(args, Predictor(cfg), class_names_of(cfg))
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
        instances = predictor(image, args.confidence_threshold)
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
