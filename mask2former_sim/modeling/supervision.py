"""The one place that decides what a supervision mode (``MODEL.MASK_FORMER.SUPERVISION``) trains with.

========  ==========================================  ============================================  ==================
mode      matching cost                               loss families (keys)                          parts
========  ==========================================  ============================================  ==================
``mask``  class + point-sampled BCE + dice            labels (ce), masks (mask, dice)               GT masks
``box``   class + projection dice                     labels, boxinst (proj, pairwise)              box targets,
                                                                                                    pairwise schedule
``sim``   class + projection dice                     labels, boxinst, pseudo, paste                the box parts, SIM
========  ==========================================  ============================================  ==================

:func:`build_supervision` returns a :class:`Supervision`: the matching cost, the ordered loss families and their
weights, and the mode's :class:`~.targets.SupervisionPart` objects, which the meta-architecture runs at fixed points
of its one training path (:mod:`.targets`). The criterion, the matcher and the meta-architecture never branch on
the mode; the data mapper asks :func:`uses_gt_masks`. A new mode is one more entry here, with its own files.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .criterion import ClassificationLoss, LossFamily, SetCriterion, expand_weight_dict
from .losses.boxinst import BoxInstLoss, BoxProjectionCost, BoxTargets
from .losses.mask import MaskCost, MaskTargets, PointSampledMaskLoss
from .losses.sim import paste_loss_family, pseudo_mask_loss_family
from .matcher import CostFn, HungarianMatcher
from .pairwise_schedule import PairwiseSchedule
from .sim.supervisor import SIMSupervisor
from .targets import MatchedBatch, SupervisionPart, Targets, image_targets

__all__ = ["SUPERVISION_MODES", "Supervision", "uses_gt_masks", "build_supervision", "build_criterion"]

SUPERVISION_MODES = ("mask", "box", "sim")

logger = logging.getLogger(__name__)


class Supervision(nn.Module):
    """What one supervision mode trains with.

    Args:
        mode: "mask", "box" or "sim".
        matching_cost: the Hungarian matcher's per-image cost ``(outputs_b, target_b) -> (Q, N)``.
        families: ``(name, family)`` loss families, evaluated in this order at every head.
        base_weights: the weight of every loss key of one head (copied to the auxiliary heads).
        parts: the mode's parts by name, run in this order (they become submodules: their state is checkpointed).
    """

    def __init__(
        self,
        *,
        mode: str,
        matching_cost: CostFn,
        families: Sequence[Tuple[str, LossFamily]],
        base_weights: Dict[str, float],
        parts: Dict[str, SupervisionPart],
    ) -> None:
        super().__init__()
        self.mode = mode
        self.matching_cost = matching_cost
        self.families = list(families)
        self.base_weights = dict(base_weights)
        self.part_names = list(parts)
        for name, part in parts.items():
            self.add_module(name, part)

    @property
    def parts(self) -> List[SupervisionPart]:
        return [getattr(self, name) for name in self.part_names]

    def prepare_inputs(self, batched_inputs: List[Dict[str, Any]], iteration: int) -> List[Dict[str, Any]]:
        """The inputs the network sees (e.g. with SIM's pastes)."""
        for part in self.parts:
            batched_inputs = part.prepare_inputs(batched_inputs, iteration)
        return batched_inputs

    def build_targets(
        self,
        batched_inputs: Sequence[Dict[str, Any]],
        padded_size: Tuple[int, int],
        device: torch.device,
        num_classes: int,
        iteration: int,
    ) -> Targets:
        """:func:`~.targets.image_targets`, then every part's targets in order."""
        targets = image_targets(batched_inputs, padded_size, device, num_classes)
        for part in self.parts:
            targets = part.build_targets(targets, batched_inputs, iteration)
        return targets

    def after_matching(self, targets: Targets, batch: MatchedBatch) -> Targets:
        """Every part's work once the queries are matched (e.g. SIM's pseudo masks)."""
        for part in self.parts:
            targets = part.after_matching(targets, batch)
        return targets

    def hooks(self, model: nn.Module) -> List[Any]:
        """The trainer hooks of every part, in order (the engine asks the mode; it never tests types)."""
        return [hook for part in self.parts for hook in part.hooks(model)]

    def set_statistics_due(self, due: bool) -> None:
        """Whether the next training forward measures the parts' statistics (the trainer: on logging iterations)."""
        for part in self.parts:
            part.statistics_due = bool(due)

    def statistics(self) -> Dict[str, float]:
        """The parts' scalars of the last training forward."""
        merged: Dict[str, float] = {}
        for part in self.parts:
            merged.update(part.statistics())
        return merged

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, families={[name for name, _ in self.families]}"


def _check_mode(cfg) -> str:
    mode = cfg.MODEL.MASK_FORMER.SUPERVISION
    if mode not in SUPERVISION_MODES:
        raise ValueError(f"MODEL.MASK_FORMER.SUPERVISION must be one of {SUPERVISION_MODES}, found {mode!r}")
    return mode


def uses_gt_masks(cfg) -> bool:
    """Whether ``cfg``'s supervision reads GT masks ("mask"); box and SIM supervision never decode them."""
    return _check_mode(cfg) == "mask"


def build_supervision(
    cfg,
    backbone: Optional[nn.Module] = None,
    pixel_decoder: Optional[nn.Module] = None,
    transformer_decoder: Optional[nn.Module] = None,
) -> Supervision:
    """The :class:`Supervision` of ``cfg.MODEL.MASK_FORMER.SUPERVISION``; SIM's teacher copies the given networks."""
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
            parts={"mask_targets": MaskTargets()},
        )
    schedule = PairwiseSchedule.from_config(cfg)
    families.append(("boxinst", BoxInstLoss.from_config(cfg, schedule)))
    weights.update(loss_proj=bi.PROJECTION_WEIGHT, loss_pairwise=bi.PAIRWISE_WEIGHT)
    parts: Dict[str, SupervisionPart] = {"box_targets": BoxTargets.from_config(cfg), "pairwise_schedule": schedule}
    if mode == "sim":
        if backbone is None or pixel_decoder is None or transformer_decoder is None:
            raise ValueError("SIM supervision needs the networks its teacher copies (backbone, decoders)")
        families += [("pseudo", pseudo_mask_loss_family()), ("paste", paste_loss_family())]
        weights.update(loss_pseudo=cfg.MODEL.SIM.PSEUDO_WEIGHT, loss_paste=cfg.MODEL.SIM.PASTE_WEIGHT)
        parts["sim"] = SIMSupervisor.from_config(cfg, backbone, pixel_decoder, transformer_decoder, schedule)
        warmup_end = bi.PAIRWISE.START_ITER + max(bi.PAIRWISE.WARMUP_ITERS, 0)
        if bi.PAIRWISE_WEIGHT > 0 and not schedule.adaptive and cfg.MODEL.SIM.START_ITER < warmup_end:
            logger.warning(
                "MODEL.SIM.START_ITER %d is before the pairwise warm-up ends (iteration %d): the paper trains "
                "projection + pairwise first and starts SIM's losses after",
                cfg.MODEL.SIM.START_ITER,
                warmup_end,
            )
    return Supervision(
        mode=mode,
        matching_cost=BoxProjectionCost.from_config(cfg),
        families=families,
        base_weights=weights,
        parts=parts,
    )


def build_criterion(cfg, supervision: Supervision) -> SetCriterion:
    """The :class:`~.criterion.SetCriterion` of a supervision, with the weights of every head."""
    mf = cfg.MODEL.MASK_FORMER
    num_aux = mf.DEC_LAYERS - 1 if mf.DEEP_SUPERVISION else 0
    return SetCriterion(
        matcher=HungarianMatcher(cost=supervision.matching_cost),
        families=supervision.families,
        weight_dict=expand_weight_dict(supervision.base_weights, num_aux),
    )
