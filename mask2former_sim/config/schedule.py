"""One schedule rule for any ``SOLVER.MAX_ITER`` (``SOLVER.SCHEDULE``): every iteration count of a run as a fraction
of its length, so that a config trains the same way at 1,000 or 4,400 iterations.

With ``SOLVER.SCHEDULE.ENABLED`` the rule sets, for M = ``SOLVER.MAX_ITER`` (counts rounded half up):

- ``SOLVER.STEPS`` = ``STEPS`` · M (the LR drop at 85%); ``SOLVER.WARMUP_ITERS`` = ``LR_WARMUP`` · M;
  ``SOLVER.CHECKPOINT_PERIOD`` = ``CHECKPOINT`` · M (at least 1);
- ``MODEL.BOXINST.PAIRWISE.START_ITER`` = ``PAIRWISE_START`` · M (projection alone before; with
  ``START_BOX_IOU`` > 0 the earliest start) and ``WARMUP_ITERS`` = ``PAIRWISE_WARMUP`` · M (at least 1);
- ``MODEL.SIM.START_ITER`` = the pairwise start + its warm-up (SIM's losses after BoxInst's warm-up, the paper's
  order) and ``MODEL.SIM.EMA_MOMENTUM`` = 1 − 1 / (``EMA_TIME_CONSTANT`` · M) (the teacher's time constant a
  fixed share of the run).

At M = 1,000 the defaults give the values the CPU configs used (850, 50, 500, 110, 610, 0.99). A key the rule sets
that a config or an override sets to another value than both its default and the rule's is an error naming it:
the rule never overrides a value without a word. A config written out by a run (its ``config.yaml``) holds the
rule's values and loads again unchanged.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

__all__ = ["schedule_values", "apply_schedule", "check_schedule"]


def _count(fraction: float, max_iter: int) -> int:
    return int(fraction * max_iter + 0.5)


def schedule_values(schedule: Any, max_iter: int) -> Dict[str, Any]:
    """``{full key: value}`` of every key the rule sets for a run of ``max_iter`` iterations (see the module)."""
    start = _count(schedule.PAIRWISE_START, max_iter)
    warmup = max(1, _count(schedule.PAIRWISE_WARMUP, max_iter))
    return {
        "SOLVER.STEPS": tuple(_count(f, max_iter) for f in schedule.STEPS),
        "SOLVER.WARMUP_ITERS": _count(schedule.LR_WARMUP, max_iter),
        "SOLVER.CHECKPOINT_PERIOD": max(1, _count(schedule.CHECKPOINT, max_iter)),
        "MODEL.BOXINST.PAIRWISE.START_ITER": start,
        "MODEL.BOXINST.PAIRWISE.WARMUP_ITERS": warmup,
        "MODEL.SIM.START_ITER": start + warmup,
        "MODEL.SIM.EMA_MOMENTUM": 1.0 - 1.0 / (schedule.EMA_TIME_CONSTANT * max_iter),
    }


def _node_and_leaf(cfg: Any, key: str):
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    return node, leaf


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return a == b


def _mismatches(cfg: Any, values: Dict[str, Any], defaults: Optional[Any] = None) -> List[str]:
    """``"KEY = found (the rule: value)"`` for every key of ``values`` whose value in ``cfg`` is not the rule's (nor,
    with ``defaults``, its default)."""
    found_keys = []
    for key, value in values.items():
        node, leaf = _node_and_leaf(cfg, key)
        found = node[leaf]
        default_node, _ = _node_and_leaf(defaults, key) if defaults is not None else (None, None)
        if _same(found, value) or (default_node is not None and _same(found, default_node[leaf])):
            continue
        found_keys.append(f"{key} = {found!r} (the rule: {value!r})")
    return found_keys


def apply_schedule(cfg: Any, defaults: Any) -> None:
    """Set the rule's keys in ``cfg`` when ``SOLVER.SCHEDULE.ENABLED`` (in place; nothing otherwise).

    Raises:
        ValueError: ``SOLVER.MAX_ITER`` is not positive, or a key the rule sets holds another value than its
            default and the rule's (each such key named, with both values).
    """
    schedule = cfg.SOLVER.SCHEDULE
    if not schedule.ENABLED:
        return
    max_iter = cfg.SOLVER.MAX_ITER
    if not max_iter > 0:
        raise ValueError(f"SOLVER.SCHEDULE.ENABLED needs SOLVER.MAX_ITER > 0, found {max_iter!r}")
    values = schedule_values(schedule, max_iter)
    conflicts = _mismatches(cfg, values, defaults)
    if conflicts:
        raise ValueError(
            f"SOLVER.SCHEDULE.ENABLED sets these keys from SOLVER.MAX_ITER = {max_iter}, but the config sets them "
            f"too: {'; '.join(conflicts)}. Remove them, or set SOLVER.SCHEDULE.ENABLED False"
        )
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    for key, value in values.items():
        node, leaf = _node_and_leaf(cfg, key)
        node[leaf] = value
    if was_frozen:
        cfg.freeze()


def check_schedule(cfg: Any) -> None:
    """With ``SOLVER.SCHEDULE.ENABLED`` the keys the rule sets must hold the rule's values for the config's
    ``SOLVER.MAX_ITER`` (``get_cfg`` sets them; a config changed afterwards must go through it again).

    Raises:
        ValueError: names each key whose value is not the rule's, with both values.
    """
    if not cfg.SOLVER.SCHEDULE.ENABLED:
        return
    stale = _mismatches(cfg, schedule_values(cfg.SOLVER.SCHEDULE, cfg.SOLVER.MAX_ITER))
    if stale:
        raise ValueError(
            f"SOLVER.SCHEDULE.ENABLED: these keys are not the rule's values for SOLVER.MAX_ITER = "
            f"{cfg.SOLVER.MAX_ITER}: {'; '.join(stale)}. Build the config with get_cfg(file, overrides), which sets "
            "them, or set SOLVER.SCHEDULE.ENABLED False"
        )
