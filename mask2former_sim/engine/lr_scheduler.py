"""Learning-rate schedules stepped once per iteration: multi-step and poly, both with warm-up (detectron2).

With ``t`` the iteration (the scheduler's ``last_epoch``), ``lr_0`` a group's base lr and warm-up factor

    w(t) = 1                                        if t >= WARMUP_ITERS
    w(t) = WARMUP_FACTOR                            ("constant")
    w(t) = WARMUP_FACTOR * (1 - t/T_w) + t/T_w      ("linear", T_w = WARMUP_ITERS)

the schedules are

    multi-step:  lr(t) = lr_0 * w(t) * GAMMA ** #{s in STEPS : s <= t}
    poly:        lr(t) = lr_0 * w(t) * (1 - t / MAX_ITER) ** POLY_LR_POWER, floored at
                 lr_0 * POLY_LR_CONSTANT_ENDING once warm-up is over (when the floor is > 0).
"""

from __future__ import annotations

import bisect
import logging
from typing import List, Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupMultiStepLR", "WarmupPolyLR", "warmup_factor_at_iter", "build_lr_scheduler"]

logger = logging.getLogger(__name__)


def warmup_factor_at_iter(method: str, iteration: int, warmup_iters: int, warmup_factor: float) -> float:
    """Warm-up multiplier ``w(t)`` of the module docstring (1.0 once ``iteration >= warmup_iters``)."""
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iteration / warmup_iters
        return warmup_factor * (1.0 - alpha) + alpha
    raise ValueError(f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got {method!r}")


class WarmupMultiStepLR(LRScheduler):
    """``lr_0 * w(t) * gamma ** (number of milestones <= t)``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        if list(milestones) != sorted(milestones):
            raise ValueError(f"SOLVER.STEPS must be increasing, got {list(milestones)}")
        self.milestones = [int(m) for m in milestones]
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        w = warmup_factor_at_iter(self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor)
        decay = self.gamma ** bisect.bisect_right(self.milestones, self.last_epoch)
        return [base_lr * w * decay for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> List[float]:
        return self.get_lr()


class WarmupPolyLR(LRScheduler):
    """``lr_0 * w(t) * (1 - t / max_iters) ** power``, floored at ``lr_0 * constant_ending`` after warm-up."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        power: float = 0.9,
        constant_ending: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if max_iters <= 0:
            raise ValueError(f"WarmupPolyLR needs SOLVER.MAX_ITER > 0, got {max_iters}")
        self.max_iters = max_iters
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        self.power = power
        self.constant_ending = constant_ending
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        w = warmup_factor_at_iter(self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor)
        poly = max(0.0, 1.0 - self.last_epoch / self.max_iters) ** self.power
        if self.constant_ending > 0 and w == 1.0 and poly < self.constant_ending:
            return [base_lr * self.constant_ending for base_lr in self.base_lrs]
        return [base_lr * w * poly for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> List[float]:
        return self.get_lr()


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """``SOLVER.LR_SCHEDULER_NAME`` ("WarmupMultiStepLR" or "WarmupPolyLR") configured from ``cfg.SOLVER``."""
    solver = cfg.SOLVER
    name = solver.LR_SCHEDULER_NAME
    warmup = dict(
        warmup_factor=solver.WARMUP_FACTOR,
        warmup_iters=solver.WARMUP_ITERS,
        warmup_method=solver.WARMUP_METHOD,
    )
    if name == "WarmupMultiStepLR":
        steps = [s for s in solver.STEPS if s <= solver.MAX_ITER]
        if len(steps) != len(solver.STEPS):
            logger.warning(
                "SOLVER.STEPS %s has milestones beyond SOLVER.MAX_ITER %d; they are ignored",
                list(solver.STEPS),
                solver.MAX_ITER,
            )
        return WarmupMultiStepLR(optimizer, steps, gamma=solver.GAMMA, **warmup)
    if name == "WarmupPolyLR":
        return WarmupPolyLR(
            optimizer,
            solver.MAX_ITER,
            power=solver.POLY_LR_POWER,
            constant_ending=solver.POLY_LR_CONSTANT_ENDING,
            **warmup,
        )
    raise ValueError(f"SOLVER.LR_SCHEDULER_NAME must be 'WarmupMultiStepLR' or 'WarmupPolyLR', got {name!r}")
