#!/usr/bin/env python
"""Turn a SIM training checkpoint taken before the pairwise start into a resumable projection-only or BoxInst-M2F one.

Before the pairwise start a SIM run trains the projection term alone, as projection only and BoxInst-M2F do: its
network and optimizer at that point are the ones those runs reach with the same seed
(docs/experiments/cats_curves.md compares them tensor by tensor). The SIM parts of
the checkpoint (teacher, prototypes) are dropped; everything else (network, optimizer, scheduler, iteration, RNG)
is kept, and ``last_checkpoint`` in the output folder names the new file. The SIM run's ``metrics.json`` records up
to the checkpoint's iteration are copied without SIM's keys (its losses are zero there), so that the box run's
curves start at iteration 0. Then

    python dev/sim_checkpoint_to_box.py output/sim_s1/model_0002199.pth output/proj_s1
    python train_net.py --config-file configs/cpu/boxinst_m2f_cats_lite0.yaml --resume ... OUTPUT_DIR output/proj_s1

continues the box run from there. A checkpoint written after the earliest pairwise start is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

from mask2former_sim.engine.checkpoint import (
    LAST_CHECKPOINT_FILE,
    atomic_torch_save,
    atomic_write_text,
    load_checkpoint_file,
)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from plot_metrics import read_metrics  # noqa: E402

SIM_PREFIX = "supervision.sim."  # the teacher and prototype bank inside the SIM model's state dict
SIM_METRICS = ("sim/", "loss_pseudo", "loss_paste")  # metrics.json keys only a SIM run logs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a SIM run's model_XXXXXXX.pth")
    parser.add_argument("output_dir", help="the box run's OUTPUT_DIR (created; must hold no checkpoint yet)")
    args = parser.parse_args()

    data = load_checkpoint_file(args.checkpoint, allow_pickle=True)
    if not isinstance(data, dict) or not {"model", "iteration", "cfg"} <= set(data):
        raise SystemExit(f"{args.checkpoint} is not a training checkpoint (expected 'model', 'iteration' and 'cfg')")
    dropped = [key for key in data["model"] if key.startswith(SIM_PREFIX)]
    if not dropped:
        raise SystemExit(f"{args.checkpoint} holds no '{SIM_PREFIX}*' keys: not a SIM run's checkpoint")
    start = yaml.safe_load(data["cfg"])["MODEL"]["BOXINST"]["PAIRWISE"]["START_ITER"]
    if data["iteration"] + 1 > start:
        raise SystemExit(
            f"{args.checkpoint}: iteration {data['iteration']} is after the earliest pairwise start ({start}); "
            "the projection term alone did not produce it"
        )
    if os.path.exists(os.path.join(args.output_dir, LAST_CHECKPOINT_FILE)):
        raise SystemExit(f"{args.output_dir} already holds a checkpoint; choose an empty OUTPUT_DIR")
    data["model"] = {k: v for k, v in data["model"].items() if not k.startswith(SIM_PREFIX)}
    data["source"] = os.path.abspath(args.checkpoint)
    name = os.path.basename(args.checkpoint)
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, name)
    atomic_torch_save(data, path)
    atomic_write_text(name, os.path.join(args.output_dir, LAST_CHECKPOINT_FILE))
    print(f"wrote {path}: iteration {data['iteration']}, dropped {len(dropped)} SIM keys")
    metrics = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "metrics.json")
    if os.path.isfile(metrics):
        kept = [
            json.dumps({k: v for k, v in record.items() if not k.startswith(SIM_METRICS)}) + "\n"
            for record in read_metrics(metrics)
            if record["iteration"] <= data["iteration"]
        ]
        atomic_write_text("".join(kept), os.path.join(args.output_dir, "metrics.json"))
        print(f"copied {len(kept)} records of {metrics} up to iteration {data['iteration']}")


if __name__ == "__main__":
    main()
