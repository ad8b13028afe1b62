"""One schedule rule for any SOLVER.MAX_ITER (mask2former_sim/config/schedule.py): the cats configs' iteration
counts at two lengths against hand-computed values, no silent override, and a written config.yaml loads again."""

from pathlib import Path

import pytest

from mask2former_sim.config import get_cfg

CATS = Path(__file__).resolve().parents[1] / "configs" / "cpu"


@pytest.mark.parametrize(
    "max_iter, expected",
    [
        # 1000 iterations: the values the cats configs held before the rule, checkpoints every 250
        # (docs/experiments/photographs_supervision_modes.md)
        (1000, dict(steps=(850,), lr_warmup=50, checkpoint=250, start=500, warmup=110, sim=610, ema=0.99)),
        # 4400 iterations (50 epochs of 700 photos at batch 8): 0.85, 0.05, 0.25, 0.5, 0.11 of the run; SIM after
        # the warm-up; a teacher time constant of 440 iterations
        (4400, dict(steps=(3740,), lr_warmup=220, checkpoint=1100, start=2200, warmup=484, sim=2684, ema=1 - 1 / 440)),
    ],
)
def test_the_rule_at_two_lengths(max_iter, expected):
    cfg = get_cfg(str(CATS / "sim_m2f_cats_lite0.yaml"), ["SOLVER.MAX_ITER", str(max_iter)])
    assert tuple(cfg.SOLVER.STEPS) == expected["steps"]
    assert cfg.SOLVER.WARMUP_ITERS == expected["lr_warmup"]
    assert cfg.SOLVER.CHECKPOINT_PERIOD == expected["checkpoint"]
    assert cfg.MODEL.BOXINST.PAIRWISE.START_ITER == expected["start"]
    assert cfg.MODEL.BOXINST.PAIRWISE.WARMUP_ITERS == expected["warmup"]
    assert cfg.MODEL.SIM.START_ITER == expected["sim"]  # SIM's losses once the pairwise warm-up has ended
    assert cfg.MODEL.SIM.EMA_MOMENTUM == pytest.approx(expected["ema"], abs=1e-12)


def test_the_three_cats_configs_share_the_rule():
    configs = [get_cfg(str(CATS / f"{m}_cats_lite0.yaml")) for m in ("m2f", "boxinst_m2f", "sim_m2f")]
    assert all(c.SOLVER.SCHEDULE.ENABLED for c in configs)
    assert (
        len({(tuple(c.SOLVER.STEPS), c.MODEL.BOXINST.PAIRWISE.START_ITER, c.MODEL.SIM.START_ITER) for c in configs})
        == 1
    )


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("MODEL.SIM.START_ITER", 300, "MODEL.SIM.START_ITER = 300 (the rule: 610)"),
        ("SOLVER.STEPS", (700,), "SOLVER.STEPS = (700,) (the rule: (850,))"),
        ("MODEL.SIM.EMA_MOMENTUM", 0.999, "MODEL.SIM.EMA_MOMENTUM = 0.999"),
    ],
)
def test_a_key_the_rule_sets_cannot_be_set_as_well(key, value, named):
    with pytest.raises(ValueError, match="SOLVER.SCHEDULE.ENABLED") as err:
        get_cfg(str(CATS / "sim_m2f_cats_lite0.yaml"), [key, str(value)])
    assert named in str(err.value)
    # with the rule off the same override is the config's value
    cfg = get_cfg(str(CATS / "sim_m2f_cats_lite0.yaml"), ["SOLVER.SCHEDULE.ENABLED", "False", key, str(value)])
    node = cfg
    for name in key.split("."):
        node = node[name]
    assert (tuple(node) if isinstance(node, (list, tuple)) else node) == value


def test_a_written_config_loads_again_with_the_same_schedule(tmp_path):
    cfg = get_cfg(str(CATS / "sim_m2f_cats_lite0.yaml"), ["SOLVER.MAX_ITER", "4400"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    again = get_cfg(str(path))
    assert again.dump() == cfg.dump()


def test_the_rule_is_off_by_default_and_leaves_other_configs_alone():
    cfg = get_cfg(str(CATS / "sim_m2f_synthetic_tiny.yaml"))
    assert not cfg.SOLVER.SCHEDULE.ENABLED
    assert tuple(cfg.SOLVER.STEPS) == (700,) and cfg.MODEL.SIM.START_ITER == 500 and cfg.SOLVER.CHECKPOINT_PERIOD == 500
