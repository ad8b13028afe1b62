"""Learning-rate schedules against hand-computed values."""

import pytest
import torch

from mask2former_sim.config import get_cfg
from mask2former_sim.engine.lr_scheduler import WarmupMultiStepLR, WarmupPolyLR, build_lr_scheduler


def _optimizer(lrs=(1.0, 0.1)):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    return torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], lr=lrs[0])


def _run(scheduler, optimizer, n):
    """lr of each group used at iterations 0..n-1 (the scheduler is stepped after each iteration)."""
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def test_multistep_linear_warmup_hand_values():
    opt = _optimizer()
    sched = WarmupMultiStepLR(opt, milestones=[6, 8], gamma=0.1, warmup_factor=0.5, warmup_iters=4)
    lrs = _run(sched, opt, 10)
    # warm-up w(t) = 0.5 * (1 - t/4) + t/4 for t < 4: 0.5, 0.625, 0.75, 0.875; then 1; x0.1 from 6; x0.01 from 8
    expected = [0.5, 0.625, 0.75, 0.875, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    assert [r[0] for r in lrs] == pytest.approx(expected)
    assert [r[1] for r in lrs] == pytest.approx([0.1 * e for e in expected])  # backbone group keeps its ratio


def test_multistep_constant_warmup_hand_values():
    opt = _optimizer((2.0,))
    sched = WarmupMultiStepLR(
        opt, milestones=[3], gamma=0.5, warmup_factor=0.1, warmup_iters=2, warmup_method="constant"
    )
    assert [r[0] for r in _run(sched, opt, 5)] == pytest.approx([0.2, 0.2, 2.0, 1.0, 1.0])


def test_poly_hand_values():
    opt = _optimizer((1.0,))
    sched = WarmupPolyLR(opt, max_iters=10, warmup_factor=1.0, warmup_iters=0, power=0.9)
    expected = [(1 - t / 10) ** 0.9 for t in range(10)]
    assert [r[0] for r in _run(sched, opt, 10)] == pytest.approx(expected)


def test_poly_warmup_and_constant_ending():
    opt = _optimizer((1.0,))
    sched = WarmupPolyLR(
        opt, max_iters=10, warmup_factor=0.1, warmup_iters=2, power=1.0, constant_ending=0.25, warmup_method="linear"
    )
    got = [r[0] for r in _run(sched, opt, 10)]
    # t=0: w=0.1, poly 1.0; t=1: w=0.55, poly 0.9; t>=2: max(1 - t/10, 0.25) after warm-up
    expected = [0.1, 0.55 * 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.25]
    assert got == pytest.approx(expected)


def test_state_dict_round_trip_continues_identically():
    opt_a = _optimizer()
    sched_a = WarmupMultiStepLR(opt_a, milestones=[5], warmup_factor=0.01, warmup_iters=3)
    _run(sched_a, opt_a, 4)
    state = sched_a.state_dict()
    opt_b = _optimizer()
    sched_b = WarmupMultiStepLR(opt_b, milestones=[5], warmup_factor=0.01, warmup_iters=3)
    opt_b.load_state_dict(opt_a.state_dict())
    sched_b.load_state_dict(state)
    assert _run(sched_a, opt_a, 4) == _run(sched_b, opt_b, 4)


def test_build_from_config():
    cfg = get_cfg()
    cfg.SOLVER.MAX_ITER = 100
    cfg.SOLVER.STEPS = (50, 80, 200)
    cfg.SOLVER.WARMUP_ITERS = 0
    opt = _optimizer((1e-4,))
    sched = build_lr_scheduler(cfg, opt)
    assert isinstance(sched, WarmupMultiStepLR) and sched.milestones == [50, 80]
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    assert isinstance(build_lr_scheduler(cfg, _optimizer()), WarmupPolyLR)
    cfg.SOLVER.LR_SCHEDULER_NAME = "Cosine"
    with pytest.raises(ValueError, match="LR_SCHEDULER_NAME"):
        build_lr_scheduler(cfg, _optimizer())
