#!/usr/bin/env python
"""Where a training step's time goes under box (BoxInst-M2F) and SIM supervision, and SIM's cost over boxes.

    python tools/benchmark_sim_step.py --config-file configs/cpu/sim_m2f_synthetic_tiny.yaml --steps 10
    python tools/benchmark_sim_step.py --config-file configs/cpu/sim_m2f_synthetic_tiny.yaml --device cuda

Builds the config's trainer once per mode (``--modes``, default ``box sim``), prefetches ``--batches`` real
training batches (so data loading is not timed), runs ``--warmup`` steps and then times ``--steps`` steps of
``Trainer.run_step`` twice:

1. plain: the median wall time of a whole step (on CUDA synchronised only around the step);
2. by stage: every stage below is wrapped with a timer that synchronises CUDA before and after it, so the sum
   is slower than the plain step, but the split is exact. Stage times are exclusive of the timed stages they
   call; "other" (backward, target preparation, Python glue) is the step minus the timed stages.

SIM's START_ITER is set to 0 so that its pseudo-mask and copy-paste losses are on in every timed step (the bank
fills during the warm-up). Prints one table per mode and the ratio of the SIM step to the box step (same process,
same batches).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import time
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch

from mask2former_sim.config import get_cfg
from mask2former_sim.data import build_train_loader
from mask2former_sim.engine.trainer import Trainer
from mask2former_sim.modeling import meta_arch
from mask2former_sim.modeling.sim import supervisor


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Accumulates synchronised wall time per stage name while ``enabled``.

    Times are exclusive: a timed stage called inside another (e.g. matching inside the criterion) is charged to
    itself and removed from the caller, so the stages add up to at most the step.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.enabled = False
        self.seconds: Dict[str, float] = defaultdict(float)
        self._children: List[float] = []  # per open stage: time spent in timed stages it called

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return fn(*args, **kwargs)
            synchronize(self.device)
            start = time.perf_counter()
            self._children.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                synchronize(self.device)
                elapsed = time.perf_counter() - start
                self.seconds[name] += elapsed - self._children.pop()
                if self._children:
                    self._children[-1] += elapsed

        return timed


@contextlib.contextmanager
def patched(obj: Any, attr: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    """Replace ``obj.attr`` by ``wrapper(obj.attr)`` for the duration (instance or module attribute)."""
    original = getattr(obj, attr)
    had_own = attr in vars(obj)
    setattr(obj, attr, wrapper(original))
    try:
        yield
    finally:
        if had_own:
            setattr(obj, attr, original)
        else:
            delattr(obj, attr)


def stage_patches(trainer: Trainer, timer: StageTimer) -> List[Tuple[Any, str, str]]:
    """(object, attribute, stage name) of every timed stage present in this trainer's model."""
    model = trainer.model
    stages = [
        (model, "forward_network", "student forward"),
        (meta_arch, "box_targets", "box targets (Lab, affinities)"),
        (model.criterion, "match", "Hungarian matching"),
        (model.criterion, "forward", "losses"),
        (trainer, "_optimizer_step", "optimizer step"),
    ]
    if model.sim is not None:
        sim = model.sim
        stages += [
            (sim, "paste", "copy-paste (CPU)"),
            (meta_arch, "paste_targets", "paste targets"),
            (sim.teacher, "forward", "teacher forward"),
            (type(sim.pseudo_masks), "__call__", "pseudo masks (Eq. 1, 6, 7)"),
            (supervisor, "teacher_statistics", "teacher statistics (log steps)"),
            (sim.prototypes, "update", "prototype update (Sinkhorn)"),
            (sim.teacher, "update", "teacher EMA"),
        ]
        if sim.copy_paste is not None:
            stages.append((sim.copy_paste, "push", "bank push"))
    return stages


def time_mode(cfg: Any, batches: List[Any], warmup: int, steps: int) -> Dict[str, Any]:
    """Plain median step seconds and the per-stage mean seconds of one supervision mode."""
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer._data_iter = itertools.cycle(batches)  # what train() would set, minus the loader
    trainer.model.train()
    device = trainer.device

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        trainer.run_step()
        synchronize(device)
        trainer.iter += 1
        return time.perf_counter() - start

    for _ in range(warmup):
        step()
    plain = statistics.median(step() for _ in range(steps))

    timer = StageTimer(device)
    with contextlib.ExitStack() as stack:
        for obj, attr, name in stage_patches(trainer, timer):
            stack.enter_context(patched(obj, attr, lambda fn, name=name: timer.wrap(name, fn)))
        timer.enabled = True
        total = sum(step() for _ in range(steps))
    stages = {name: seconds / steps for name, seconds in timer.seconds.items()}
    stages["other (backward, targets, Python)"] = total / steps - sum(stages.values())
    return {"plain": plain, "instrumented": total / steps, "stages": stages}


def format_table(mode: str, result: Dict[str, Any]) -> str:
    step = result["instrumented"]
    lines = [
        f"{mode}: plain step {result['plain'] * 1000:.1f} ms (median); by stage (synchronised) {step * 1000:.1f} ms",
        "",
        "| stage | ms/step | % of step |",
        "|---|---|---|",
    ]
    for name, seconds in sorted(result["stages"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {seconds * 1000:.1f} | {100 * seconds / step:.1f} |")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default="configs/cpu/sim_m2f_synthetic_tiny.yaml")
    parser.add_argument("--modes", nargs="+", default=["box", "sim"], choices=["mask", "box", "sim"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=4, help="distinct training batches, cycled")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    results: Dict[str, Any] = {}
    batches: List[Any] = []
    for mode in args.modes:
        cfg = get_cfg(
            args.config_file,
            [
                "MODEL.MASK_FORMER.SUPERVISION",
                mode,
                "MODEL.DEVICE",
                args.device,
                "MODEL.SIM.START_ITER",
                "0",
                "OUTPUT_DIR",
                "",
                "LOG_PERIOD",
                "0",
                "DATALOADER.NUM_WORKERS",
                "0",
                *args.opts,
            ],
        )
        if not batches:
            batches = list(itertools.islice(iter(build_train_loader(cfg)), args.batches))
        results[mode] = time_mode(cfg, batches, args.warmup, args.steps)
        print(format_table(mode, results[mode]), end="\n\n", flush=True)
    if "box" in results and "sim" in results:
        ratio_plain = results["sim"]["plain"] / results["box"]["plain"]
        print(
            f"SIM / box step time: {ratio_plain:.2f}x (plain), "
            f"{results['sim']['instrumented'] / results['box']['instrumented']:.2f}x (by stage)"
        )
    return results


if __name__ == "__main__":
    main()
