"""The one place that decides what a supervision mode (``MODEL.MASK_FORMER.SUPERVISION``) trains with.

========  ==========================================  ============================================  ==========
mode      matching cost                               loss families (keys)                          GT masks
========  ==========================================  ============================================  ==========
``mask``  class + point-sampled BCE + dice            labels (ce), masks (mask, dice)               yes
``box``   class + projection dice                     labels, boxinst (proj, pairwise)              no
``sim``   class + projection dice                     labels, boxinst, pseudo, paste                no
========  ==========================================  ============================================  ==========

:func:`build_supervision` returns the matching cost, the ordered loss families and their weights, and what the
targets need (GT masks; box masks and colour similarities; SIM's copy-paste and pseudo masks). The criterion
and the matcher take them without knowing the mode; the data mapper asks :func:`uses_gt_masks`. A new mode is
one more entry here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .box_supervision import BoxInstLoss, BoxProjectionCost
from .criterion import ClassificationLoss, LossFamily, SetCriterion, expand_weight_dict
from .mask_supervision import MaskCost, PointSampledMaskLoss
from .matcher import CostFn, HungarianMatcher
from .pairwise_schedule import PairwiseSchedule
from .sim.losses import paste_loss_family, pseudo_mask_loss_family

__all__ = ["SUPERVISION_MODES", "Supervision", "uses_gt_masks", "build_supervision", "build_criterion"]

SUPERVISION_MODES = ("mask", "box", "sim")

logger = logging.getLogger(__name__)


@dataclass
class Supervision:
    """What one supervision mode trains with.

    Attributes:
        mode: "mask", "box" or "sim".
        matching_cost: the Hungarian matcher's per-image cost ``(outputs_b, target_b) -> (Q, N)``.
        families: ``(name, family)`` loss families, evaluated in this order at every head.
        base_weights: the weight of every loss key of one head (copied to the auxiliary heads).
        gt_masks: the targets carry GT masks (and the data path decodes them).
        box_target_kwargs: kwargs of :func:`~.targets.box_targets` (box masks, colour similarity), or None.
        sim: the SIM supervisor (teacher, prototypes, pseudo masks, copy-paste) is part of the model.
        pairwise_schedule: when the pairwise term acts (box and SIM supervision; a module with state), or None.
    """

    mode: str
    matching_cost: CostFn
    families: List[Tuple[str, LossFamily]]
    base_weights: Dict[str, float]
    gt_masks: bool
    box_target_kwargs: Optional[Dict[str, Any]]
    sim: bool
    pairwise_schedule: Optional[PairwiseSchedule] = None


def _check_mode(cfg) -> str:
    mode = cfg.MODEL.MASK_FORMER.SUPERVISION
    if mode not in SUPERVISION_MODES:
        raise ValueError(f"MODEL.MASK_FORMER.SUPERVISION must be one of {SUPERVISION_MODES}, found {mode!r}")
    return mode


def uses_gt_masks(cfg) -> bool:
    """Whether ``cfg``'s supervision reads GT masks ("mask"); box and SIM supervision never decode them."""
    return _check_mode(cfg) == "mask"


def build_supervision(cfg) -> Supervision:
    """The :class:`Supervision` of ``cfg.MODEL.MASK_FORMER.SUPERVISION``."""
    mode = _check_mode(cfg)
    mf, bi = cfg.MODEL.MASK_FORMER, cfg.MODEL.BOXINST
    families: List[Tuple[str, LossFamily]] = [
        ("labels", ClassificationLoss(num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, eos_coef=mf.NO_OBJECT_WEIGHT))
    ]
    weights = {"loss_ce": mf.CLASS_WEIGHT}
    if mode == "mask":
        families.append(("masks", PointSampledMaskLoss.from_config(cfg)))
        weights.update(loss_mask=mf.MASK_WEIGHT, loss_dice=mf.DICE_WEIGHT)
        return Supervision(
            mode=mode,
            matching_cost=MaskCost.from_config(cfg),
            families=families,
            base_weights=weights,
            gt_masks=True,
            box_target_kwargs=None,
            sim=False,
        )
    schedule = PairwiseSchedule.from_config(cfg)
    families.append(("boxinst", BoxInstLoss.from_config(cfg, schedule)))
    weights.update(loss_proj=bi.PROJECTION_WEIGHT, loss_pairwise=bi.PAIRWISE_WEIGHT)
    if mode == "sim":
        families += [("pseudo", pseudo_mask_loss_family()), ("paste", paste_loss_family())]
        weights.update(loss_pseudo=cfg.MODEL.SIM.PSEUDO_WEIGHT, loss_paste=cfg.MODEL.SIM.PASTE_WEIGHT)
        warmup_end = bi.PAIRWISE.START_ITER + max(bi.PAIRWISE.WARMUP_ITERS, 0)
        if bi.PAIRWISE_WEIGHT > 0 and not schedule.adaptive and cfg.MODEL.SIM.START_ITER < warmup_end:
            logger.warning(
                "MODEL.SIM.START_ITER %d is before the pairwise warm-up ends (iteration %d): the paper trains "
                "projection + pairwise first and starts SIM's losses after",
                cfg.MODEL.SIM.START_ITER,
                warmup_end,
            )
    box_target_kwargs = {
        "stride": bi.MASK_STRIDE,
        "kernel_size": bi.PAIRWISE.SIZE,
        "dilation": bi.PAIRWISE.DILATION,
        "theta": bi.PAIRWISE.THETA,
        "bottom_pixels_removed": bi.BOTTOM_PIXELS_REMOVED,
    }
    return Supervision(
        mode=mode,
        matching_cost=BoxProjectionCost.from_config(cfg),
        families=families,
        base_weights=weights,
        gt_masks=False,
        box_target_kwargs=box_target_kwargs,
        sim=mode == "sim",
        pairwise_schedule=schedule,
    )


def build_criterion(cfg, supervision: Optional[Supervision] = None) -> SetCriterion:
    """The :class:`~.criterion.SetCriterion` of ``cfg``'s supervision, with the weights of every head."""
    supervision = supervision or build_supervision(cfg)
    mf = cfg.MODEL.MASK_FORMER
    num_aux = mf.DEC_LAYERS - 1 if mf.DEEP_SUPERVISION else 0
    return SetCriterion(
        matcher=HungarianMatcher(cost=supervision.matching_cost),
        families=supervision.families,
        weight_dict=expand_weight_dict(supervision.base_weights, num_aux),
    )
