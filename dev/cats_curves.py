#!/usr/bin/env python
"""Question: where does the order of the four supervisions on cats settle when they train for 50 epochs?
(docs/experiments/cats_curves.md, issue 34.) Draws segm AP against epoch from each run's metrics.json, with the
1,000-iteration seed-0 results of docs/experiments/photographs_supervision_modes.md marked, and prints the same
numbers as a markdown table.

    python dev/cats_curves.py --run masks=<dir> --run "projection only"=<dir> --run BoxInst-M2F=<dir> \\
        --run SIM=<dir> --output docs/cats_curves.png

A label given several times (one run per seed) is drawn as the mean, its table cell reads mean ± std (per seed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from plot_metrics import read_metrics, series  # noqa: E402

TRAIN_IMAGES = 700  # feral_cats_train
BATCH = 8  # SOLVER.IMS_PER_BATCH of the cats configs
SHORT_RUN = 1000  # iterations of the §5.3 table
SHORT_RUN_SEED0 = {"masks": 17.78, "projection only": 14.71, "BoxInst-M2F": 12.21, "SIM": 13.18}  # §5.3, seed 0
STATISTICS = ("box_fit/box_iou", "sim/teacher_box_iou")  # matched masks' tight-box IoU: student, SIM's teacher


def epoch(iteration: int) -> float:
    """Epochs seen after ``iteration`` (0-based) completed."""
    return (iteration + 1) * BATCH / TRAIN_IMAGES


def evaluations(records: Sequence[Dict]) -> Dict[int, Dict[str, float]]:
    """{iteration: {metric: value}} of the evaluation records (the last one of an iteration wins: a resumed run)."""
    out = {}
    for r in records:
        if isinstance(r.get("segm/AP"), (int, float)):
            out[r["iteration"]] = r
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="LABEL=RUN_DIR (repeat a label per seed)")
    parser.add_argument("--output", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    runs: Dict[str, List[List[Dict]]] = defaultdict(list)
    for item in args.run:
        label, _, path = item.partition("=")
        runs[label].append(read_metrics(path))

    fig, (ax_ap, ax_stat) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    table: Dict[str, Dict[int, List[float]]] = {}
    for k, (label, seeds) in enumerate(runs.items()):
        colour = colours[k % len(colours)]
        per_iter: Dict[int, List[float]] = defaultdict(list)
        for records in seeds:
            for it, r in evaluations(records).items():
                per_iter[it].append(r["segm/AP"])
        its = sorted(per_iter)
        table[label] = per_iter
        means = [statistics.mean(per_iter[i]) for i in its]
        ax_ap.plot([epoch(i) for i in its], means, "-o", color=colour, label=label)
        if label in SHORT_RUN_SEED0:
            ax_ap.plot(epoch(SHORT_RUN - 1), SHORT_RUN_SEED0[label], "*", color=colour, markersize=12)
        for key, style in zip(STATISTICS, ("-", ":")):
            its_s, values = series(seeds[0], key)
            if its_s:
                epochs = [epoch(i) for i in its_s]
                ax_stat.plot(epochs, values, style, color=colour, linewidth=1, label=f"{label} {key}")
    ax_ap.plot([], [], "*", color="grey", markersize=12, label=f"{SHORT_RUN}-iteration run (seed 0)")
    ax_ap.set(xlabel="epoch (700 photos, batch 8)", ylabel="segm AP on feral_cats_val (256 px)")
    ax_stat.set(xlabel="epoch", ylabel="matched masks' box IoU (training log)")
    for ax in (ax_ap, ax_stat):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}\n")

    all_its = sorted({i for per_iter in table.values() for i in per_iter})
    print("| iteration | epoch | " + " | ".join(table) + " |")
    print("|---|---|" + "---|" * len(table))
    for i in all_its:
        cells = []
        for per_iter in table.values():
            values = per_iter.get(i, [])
            if len(values) > 1:
                cells.append(f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}")
            else:
                cells.append(f"{values[0]:.2f}" if values else "")
        print(f"| {i + 1} | {epoch(i):.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
