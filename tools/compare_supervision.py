#!/usr/bin/env python
"""Benchmark one config under mask, box (BoxInst-M2F) and SIM supervision over several seeds.

    python tools/compare_supervision.py --config-file configs/cpu/sim_m2f_synthetic_lowcontrast_tiny.yaml \\
        --seeds 0 1 2 --output-dir output/compare_lowcontrast [--modes mask box sim] [--opts KEY VALUE ...]

Runs ``train_net.py`` once per (mode, seed), ONE AT A TIME (two trainings on a small machine each run several
times slower), with ``MODEL.MASK_FORMER.SUPERVISION <mode> SEED <seed> OUTPUT_DIR <output-dir>/<mode>/seed<seed>``
plus ``--opts``; a run whose ``metrics_final.json`` exists is reused unless ``--rerun``. Then it prints and writes
``<output-dir>/comparison.md`` and ``comparison.json``: segm AP, AP50, AP75, APs, APm, APl per seed, mean ± std
(sample std) per mode, and the SIM − BoxInst-M2F difference of the means. ``--no-train`` only builds the table.
The SIM constants come from the config (e.g. ``--opts MODEL.SIM.ALPHA 0`` for the α ablation, with its own
``--output-dir``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MODE_NAMES = {"mask": "Mask2Former (masks)", "box": "BoxInst-M2F", "sim": "SIM"}


def run_dir(output_dir: str, mode: str, seed: int) -> str:
    return os.path.join(output_dir, mode, f"seed{seed}")


def train_command(config_file: str, mode: str, seed: int, out: str, opts: Sequence[str]) -> List[str]:
    """The ``train_net.py`` command line of one run."""
    return [
        sys.executable,
        os.path.join(REPO, "train_net.py"),
        "--config-file",
        config_file,
        "MODEL.MASK_FORMER.SUPERVISION",
        mode,
        "SEED",
        str(seed),
        "OUTPUT_DIR",
        out,
        *opts,
    ]


def read_segm(path: str) -> Optional[Dict[str, float]]:
    """segm metrics of a ``metrics_final.json`` (single test set, or the first of several), None if absent."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        results = json.load(f).get("results") or {}
    if "segm" not in results and results:
        results = next(iter(results.values()))
    segm = results.get("segm")
    if segm is None:
        raise ValueError(f"{path}: expected results['segm'] with {METRICS}, found keys {sorted(results)}")
    return {k: float(segm[k]) for k in METRICS if k in segm}


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (0 for a single value) of finite values; NaN when there are none."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(vals)}


def build_table(output_dir: str, modes: Sequence[str], seeds: Sequence[int]) -> Dict[str, object]:
    """Per-seed metrics, mean ± std per mode and SIM − BoxInst-M2F, from the runs' ``metrics_final.json``."""
    per_seed: Dict[str, Dict[str, Optional[Dict[str, float]]]] = {}
    summary: Dict[str, Dict[str, Dict[str, float]]] = {}
    for mode in modes:
        per_seed[mode] = {
            str(s): read_segm(os.path.join(run_dir(output_dir, mode, s), "metrics_final.json")) for s in seeds
        }
        summary[mode] = {m: mean_std([r.get(m) for r in per_seed[mode].values() if r]) for m in METRICS}
    diff = None
    if "sim" in summary and "box" in summary:
        diff = {m: summary["sim"][m]["mean"] - summary["box"][m]["mean"] for m in METRICS}
    return {
        "metrics": list(METRICS),
        "seeds": list(seeds),
        "per_seed": per_seed,
        "summary": summary,
        "sim_minus_box": diff,
    }


def _fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def format_markdown(table: Dict[str, object]) -> str:
    """The paper-style markdown table (Table 1 columns)."""
    header = "| method | seed | " + " | ".join(METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 2)]
    for mode, runs in table["per_seed"].items():
        name = MODE_NAMES.get(mode, mode)
        for seed, r in runs.items():
            lines.append(f"| {name} | {seed} | " + " | ".join(_fmt((r or {}).get(m)) for m in METRICS) + " |")
        stats = table["summary"][mode]
        n = max(s["n"] for s in stats.values())
        cells = [f"{_fmt(stats[m]['mean'])} ± {_fmt(stats[m]['std'])}" for m in METRICS]
        lines.append(f"| **{name}** | mean ± std (n={n}) | " + " | ".join(cells) + " |")
    if table["sim_minus_box"] is not None:
        d = table["sim_minus_box"]
        lines.append("| **SIM − BoxInst-M2F** | means | " + " | ".join(_fmt(d[m], True) for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--modes", nargs="+", default=["mask", "box", "sim"], choices=sorted(MODE_NAMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for every run")
    parser.add_argument("--rerun", action="store_true", help="train again even if metrics_final.json exists")
    parser.add_argument("--no-train", action="store_true", help="only build the table from existing runs")
    args = parser.parse_args(argv)
    if len(args.opts) % 2:
        parser.error(f"--opts needs KEY VALUE pairs, got {args.opts}")
    for mode in args.modes:
        for seed in args.seeds:
            out = run_dir(args.output_dir, mode, seed)
            done = os.path.isfile(os.path.join(out, "metrics_final.json"))
            if args.no_train or (done and not args.rerun):
                continue
            cmd = train_command(args.config_file, mode, seed, out, args.opts)
            print("running:", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=REPO)
    table = build_table(args.output_dir, args.modes, args.seeds)
    text = format_markdown(table)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "comparison.md"), "w") as f:
        f.write(f"config: `{args.config_file}`, overrides: `{' '.join(args.opts)}`\n\n" + text)
    with open(os.path.join(args.output_dir, "comparison.json"), "w") as f:
        json.dump({"config": args.config_file, "opts": args.opts, **table}, f, indent=2)
    print(text)
    return table


if __name__ == "__main__":
    main()
