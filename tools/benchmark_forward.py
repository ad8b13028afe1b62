"""Forward time of backbone + pixel decoder + transformer decoder for model configs on one image.

Example (CPU, 512x512, the R50 and Swin-T COCO configs)::

    python tools/benchmark_forward.py --size 512 --repeats 3

Prints one row per config: parameters (millions) and the median forward seconds after one warm-up run
(``torch.no_grad``, random weights, eval mode). ``--device cuda`` times on a GPU (synchronised).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import List

import torch

from mask2former_sim.config import get_cfg
from mask2former_sim.modeling import build_model

DEFAULT_CONFIGS = [
    "configs/coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml",
    "configs/coco/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml",
]


def time_forward(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> float:
    """Median seconds of ``repeats`` network forwards (``model.forward_network``) after one warm-up."""

    def run() -> float:
        if images.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.forward_network(images)
        if images.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.no_grad():
        run()
        return statistics.median(run() for _ in range(repeats))


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--size", type=int, default=512, help="square input side (divisible by 32)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--msda-impl", default="auto", choices=["auto", "cuda", "pytorch"])
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    rows = []
    for path in args.configs:
        cfg = get_cfg()
        cfg.merge_from_file(path)
        cfg.merge_from_list(
            ["MODEL.SEM_SEG_HEAD.MSDA_IMPL", args.msda_impl, "MODEL.DEVICE", args.device] + list(args.opts)
        )
        model = build_model(cfg).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        images = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
        seconds = time_forward(model, images, args.repeats)
        rows.append((os.path.basename(path), params, seconds))
        del model

    print(f"device {args.device}, threads {torch.get_num_threads()}, input {args.batch}x3x{args.size}x{args.size}")
    print(f"{'config':55s} {'params (M)':>10s} {'forward (s)':>12s}")
    for name, params, seconds in rows:
        print(f"{name:55s} {params:10.2f} {seconds:12.3f}")


if __name__ == "__main__":
    main()
