#!/usr/bin/env python
"""Question: how much peak memory does the demo save on a 12-megapixel photo by resizing only the kept masks?

Peak memory of the demo's prediction on a large photo: masks of the kept instances only vs of every query.

    python dev/benchmark_demo_memory.py --config-file configs/cpu/sim_m2f_synthetic_tiny.yaml \\
        --weights output/sim_m2f_synthetic_tiny/model_final.pth --size 4000 3000 --threshold 0.5

The input is a validation image of the config's test set (default: the first of ``DATASETS.TEST``) resized to
``--size`` (W H) — a 12-megapixel photo by default. Each variant runs in a fresh process (so peaks do not mix)
and does what ``demo/demo.py`` does for one image: predict, draw, write the PNG.

- ``kept only`` (the demo): ``Predictor(image, score_threshold)`` brings only the instances that can reach the
  threshold to the image size, a few masks at a time;
- ``every query`` (the baseline, the demo before): all ``TEST.DETECTIONS_PER_IMAGE`` masks brought to the image
  size at once, then the threshold.

Prints a table of peak RSS (``ru_maxrss``) and wall time per variant and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

VARIANTS = {"kept only": "kept", "every query": "all"}


def child(args: argparse.Namespace) -> Dict[str, Any]:
    """One variant in this process: predict, draw and save; returns peak RSS (MB), seconds and instance count."""
    import numpy as np
    from PIL import Image

    from mask2former_sim import Predictor
    from mask2former_sim.config import get_cfg
    from mask2former_sim.utils.visualizer import draw_instance_predictions, save_image

    cfg = get_cfg(args.config_file, ["MODEL.DEVICE", "cpu", *args.opts])
    if args.weights:
        cfg.MODEL.WEIGHTS = args.weights
    predictor = Predictor(cfg)
    image = np.asarray(Image.open(args.image).convert("RGB"))
    start = time.perf_counter()
    if args.child == "kept":
        instances = predictor(image, args.threshold)
    else:
        import functools

        from mask2former_sim.modeling import meta_arch

        meta_arch.instances_at_size = functools.partial(meta_arch.instances_at_size, chunk_pixels=1 << 62)
        instances = predictor(image)
        keep = instances["scores"] >= args.threshold
        instances = {k: v[keep] for k, v in instances.items()}
    with tempfile.TemporaryDirectory() as tmp:
        save_image(draw_instance_predictions(image, instances), os.path.join(tmp, "out.png"))
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux
    return {"peak_mb": peak_mb, "seconds": seconds, "instances": int(instances["scores"].numel())}


def prepare_image(config_file: str, opts: Sequence[str], size: Sequence[int], path: str) -> str:
    """A test-set image of the config resized to ``size`` (W, H), saved to ``path``."""
    from PIL import Image

    from mask2former_sim.config import get_cfg
    from mask2former_sim.data import get_dataset_dicts, register_from_config

    cfg = get_cfg(config_file, list(opts))
    register_from_config(cfg)
    source = get_dataset_dicts(cfg.DATASETS.TEST[0])[0]["file_name"]
    Image.open(source).convert("RGB").resize(tuple(size), Image.BILINEAR).save(path)
    return source


def format_table(results: Dict[str, Dict[str, Any]], size: Sequence[int]) -> str:
    lines = [
        f"demo prediction on a {size[0]}x{size[1]} image",
        "",
        "| variant | peak RSS (MB) | time (s) | instances |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['peak_mb']:.0f} | {r['seconds']:.2f} | {r['instances']} |")
    base, ours = results["every query"], results["kept only"]
    lines.append(f"\nkept only / every query: peak RSS {ours['peak_mb'] / base['peak_mb']:.2f}x")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/cpu/sim_m2f_synthetic_tiny.yaml")
    parser.add_argument("--weights", default="", help="checkpoint (default: the config's MODEL.WEIGHTS)")
    parser.add_argument("--size", type=int, nargs=2, default=[4000, 3000], metavar=("W", "H"))
    parser.add_argument("--threshold", type=float, default=0.5, help="the demo's --confidence-threshold")
    parser.add_argument("--image", default="", help="use this image instead of a resized test image")
    parser.add_argument("--child", choices=sorted(VARIANTS.values()), help=argparse.SUPPRESS)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        image = args.image or os.path.join(tmp, "large.png")
        if not args.image:
            prepare_image(args.config_file, args.opts, args.size, image)
        results = {}
        for name, key in VARIANTS.items():
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--config-file",
                args.config_file,
                "--weights",
                args.weights,
                "--threshold",
                str(args.threshold),
                "--image",
                image,
                "--child",
                key,
                "--opts",
                *args.opts,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(format_table(results, args.size))
    return results


if __name__ == "__main__":
    main()
