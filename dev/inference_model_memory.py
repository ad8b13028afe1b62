#!/usr/bin/env python
"""Question: what does building the network alone for inference save when the demo loads a SIM checkpoint?

    python dev/inference_model_memory.py --config-file configs/cpu/sim_m2f_cats_lite0.yaml \\
        --weights output/sim_m2f_cats_lite0/model_final.pth --repeats 3

Each variant runs in a fresh process and does what the demo's ``Predictor`` does: build the model, load the
checkpoint, segment one photo of the config's test set. ``training model`` builds it as the predictor did before
issue 36 (``build_model(cfg)``: SIM's teacher, a second copy of the network, prototypes and bank included);
``inference model`` as it does now (``build_model(cfg, training=False)``). Prints the load time (build + load),
the first and the next prediction's time and the peak RSS (``ru_maxrss``) of each, the median over ``--repeats``
alternated runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

VARIANTS = {"training model": True, "inference model": False}

_CHILD = r"""
import json, resource, sys, time
import numpy as np
import torch
from mask2former_sim.config import get_cfg
from mask2former_sim.data import get_dataset_dicts
from mask2former_sim.data.coco import read_image
from mask2former_sim.engine.checkpoint import load_model_weights
from mask2former_sim.modeling import build_model
from mask2former_sim.data.mapper import build_test_resize

config, weights, training = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
cfg = get_cfg(config, ["MODEL.DEVICE", "cpu"])
image = read_image(get_dataset_dicts(cfg.DATASETS.TEST[0])[0]["file_name"])
start = time.perf_counter()
model = build_model(cfg, training=training).eval()
load_model_weights(model, weights, strict=True)
loaded = time.perf_counter()
height, width = image.shape[:2]
resized = build_test_resize(cfg).get_transform(height, width, np.random.default_rng(0)).apply_image(image)
tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
with torch.inference_mode():
    model.predict([{"image": tensor, "height": height, "width": width}], 0.5)
    first = time.perf_counter()
    model.predict([{"image": tensor, "height": height, "width": width}], 0.5)
done = time.perf_counter()
print(json.dumps({
    "load_s": loaded - start,
    "first_predict_s": first - loaded,
    "predict_s": done - first,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "parameters": sum(p.numel() for p in model.parameters()),
}))
"""


def run_variant(config: str, weights: str, training: bool) -> Dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, config, weights, "1" if training else "0"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="a SIM training checkpoint (model_final.pth)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    runs: Dict[str, List[Dict[str, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, training in VARIANTS.items():
            runs[name].append(run_variant(args.config_file, args.weights, training))
    table = {
        name: {key: statistics.median(r[key] for r in records) for key in records[0]} for name, records in runs.items()
    }
    print("| variant | parameters | load (s) | first prediction (s) | next prediction (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for name, row in table.items():
        print(
            f"| {name} | {row['parameters'] / 1e6:.2f} M | {row['load_s']:.2f} | {row['first_predict_s']:.2f} | "
            f"{row['predict_s']:.2f} | "
            f"{row['peak_rss_mb']:.0f} |"
        )
    before, after = table["training model"], table["inference model"]
    print(
        f"\ninference / training model: load {after['load_s'] / before['load_s']:.2f}x, "
        f"peak RSS {after['peak_rss_mb'] / before['peak_rss_mb']:.2f}x"
    )
    return table


if __name__ == "__main__":
    main()
