#!/usr/bin/env python
"""Training curves of one or more runs as a PNG: losses and AP against the iteration, from their metrics.json.

    python tools/plot_metrics.py output/run_a/metrics.json output/run_b/metrics.json \\
        --labels BoxInst-M2F SIM --output output/curves.png

Left: the total loss of each run (solid) and each loss term of the final head (``loss_*`` without a head suffix,
thin). Right: ``segm/AP`` (solid) and ``bbox/AP`` (dashed) of every evaluation in the file (periodic and final).
A run folder may be given instead of its metrics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HEAD_SUFFIX = re.compile(r"_\d+$")


def read_metrics(path: str) -> List[Dict[str, float]]:
    """The records of a metrics.json (one JSON object per line); an unreadable line names the file and line."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not JSON ({e})") from e
    if not records:
        raise ValueError(f"{path} holds no record")
    return records


def series(records: Sequence[Dict[str, float]], key: str):
    """(iterations, values) of the records that have a number under ``key``."""
    points = [(r["iteration"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def plot(runs: Dict[str, List[Dict[str, float]]], output: str) -> str:
    """Draw the curves of ``{label: records}`` into ``output`` (PNG)."""
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (label, records) in enumerate(runs.items()):
        colour = colours[k % len(colours)]
        its, total = series(records, "total_loss")
        ax_loss.plot(its, total, color=colour, label=f"{label} total")
        terms = sorted({key for r in records for key in r if key.startswith("loss_") and not HEAD_SUFFIX.search(key)})
        for term in terms:
            its, values = series(records, term)
            ax_loss.plot(its, values, color=colour, linewidth=0.8, alpha=0.6)
            if its:
                ax_loss.annotate(term, (its[-1], values[-1]), fontsize=6, color=colour)
        for key, style in (("segm/AP", "-o"), ("bbox/AP", "--s")):
            its, values = series(records, key)
            if its:
                ax_ap.plot(its, values, style, color=colour, label=f"{label} {key}", markersize=4)
    ax_loss.set(xlabel="iteration", ylabel="loss (weighted, median over the log period)", yscale="log")
    ax_ap.set(xlabel="iteration", ylabel="AP (%)")
    for ax in (ax_loss, ax_ap):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", nargs="+", help="metrics.json files (or run folders)")
    parser.add_argument("--labels", nargs="*", default=[], help="one label per run (default: the run's folder)")
    parser.add_argument("--output", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.metrics):
        parser.error(f"--labels gives {len(args.labels)} names for {len(args.metrics)} runs")
    folders = [m if os.path.isdir(m) else os.path.dirname(os.path.abspath(m)) for m in args.metrics]
    labels = args.labels or [os.path.basename(os.path.abspath(f)) for f in folders]
    runs = {label: read_metrics(path) for label, path in zip(labels, args.metrics)}
    out = plot(runs, args.output)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
