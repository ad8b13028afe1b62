"""Hungarian matching of predicted queries to ground-truth instances, one image and one head at a time.

``HungarianMatcher`` owns what every supervision mode shares: no gradients, fp32 costs with autocast off,
sanitising non-finite costs so ``scipy.optimize.linear_sum_assignment`` never sees NaN or ±inf, and the empty
and rectangular cases. What the cost *is* comes from a pluggable cost object, ``cost(outputs_b, target_b) ->
(Q, N)``, selected by ``MODEL.MASK_FORMER.SUPERVISION`` through the ``MATCHING_COSTS`` registry:

- ``"mask"`` → :class:`MaskCost`, Mask2Former's ``w_cls·(−p_cls) + w_mask·BCE + w_dice·dice`` on points.
- ``"box"``, ``"sim"`` → the box cost of :mod:`.box_supervision` (class + projection dice).

A new mode registers a factory ``cfg -> cost`` in ``MATCHING_COSTS``.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .losses.mask import batch_dice_cost, batch_sigmoid_ce_cost, point_sample

__all__ = ["HungarianMatcher", "MaskCost", "MATCHING_COSTS", "build_matcher", "sanitize_cost"]

logger = logging.getLogger(__name__)

CostFn = Callable[[Dict[str, torch.Tensor], Dict[str, torch.Tensor]], torch.Tensor]

# Replaces NaN and +inf (and, negated, −inf) in a cost matrix. Real costs are O(10); 1e8 stays exact in fp64.
LARGE_COST = 1e8


def sanitize_cost(cost: torch.Tensor, large: float = LARGE_COST) -> Tuple[torch.Tensor, bool]:
    """Make a cost matrix finite: NaN → ``large``, values clamped to [−large, large] (±inf included).

    Args:
        cost: (Q, N) cost.
        large: replacement magnitude.

    Returns:
        The finite fp32 cost and whether any entry was non-finite.
    """
    cost = cost.float()
    had_nonfinite = not bool(torch.isfinite(cost).all())
    cost = torch.nan_to_num(cost, nan=large, posinf=large, neginf=-large).clamp(-large, large)
    return cost, had_nonfinite


class MaskCost:
    """Mask2Former's matching cost against GT masks (fully supervised mode).

    C = w_cls·(−softmax(logits)[:, tgt_ids]) + w_mask·BCE_cost + w_dice·dice_cost, where BCE and dice are
    evaluated at ONE shared set of ``num_points`` uniform random points for all predictions and all GT masks.

    Set ``generator`` (a ``torch.Generator`` on the predictions' device) to make the points reproducible.
    """

    def __init__(
        self,
        *,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 12544,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("MaskCost: all cost weights are 0; set CLASS_WEIGHT, MASK_WEIGHT or DICE_WEIGHT")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.generator = generator

    @classmethod
    def from_config(cls, cfg) -> "MaskCost":
        mf = cfg.MODEL.MASK_FORMER
        return cls(
            cost_class=mf.CLASS_WEIGHT,
            cost_mask=mf.MASK_WEIGHT,
            cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
        )

    def sample_points(self, device: torch.device) -> torch.Tensor:
        """(1, P, 2) uniform points shared by all predictions and GTs of one image (replaceable in tests)."""
        return torch.rand(1, self.num_points, 2, device=device, generator=self.generator)

    def __call__(self, outputs_b: Dict[str, torch.Tensor], target_b: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Cost of one image.

        Args:
            outputs_b: ``pred_logits`` (Q, K+1), ``pred_masks`` (Q, h, w) logits at stride 4.
            target_b: ``labels`` (N,) int64, ``masks`` (N, Hp, Wp) bool/float at padded input resolution.

        Returns:
            (Q, N) fp32 cost.
        """
        if "masks" not in target_b:
            raise KeyError("MaskCost needs target 'masks' (SUPERVISION 'mask'); the targets have "
                           f"{sorted(target_b)}. Use the box cost for 'box'/'sim' supervision.")
        out_prob = outputs_b["pred_logits"].float().softmax(-1)
        cost_class = -out_prob[:, target_b["labels"]]

        out_mask = outputs_b["pred_masks"].float()[:, None]
        tgt_mask = target_b["masks"].to(out_mask)[:, None]
        point_coords = self.sample_points(out_mask.device)
        tgt_points = point_sample(tgt_mask, point_coords.expand(tgt_mask.shape[0], -1, -1)).squeeze(1)
        out_points = point_sample(out_mask, point_coords.expand(out_mask.shape[0], -1, -1)).squeeze(1)

        return (
            self.cost_class * cost_class
            + self.cost_mask * batch_sigmoid_ce_cost(out_points, tgt_points)
            + self.cost_dice * batch_dice_cost(out_points, tgt_points)
        )


def _box_matching_cost(cfg):
    from .box_supervision import build_box_matching_cost

    return build_box_matching_cost(cfg)


# supervision mode -> factory ``cfg -> cost``; a new mode adds its entry here.
MATCHING_COSTS: Dict[str, Callable] = {"mask": MaskCost.from_config, "box": _box_matching_cost, "sim": _box_matching_cost}


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground truths minimising a per-image cost matrix.

    Args:
        cost: callable ``(outputs_b, target_b) -> (Q, N)`` (e.g. :class:`MaskCost`).
        large_cost: replacement for non-finite costs (see :func:`sanitize_cost`).
    """

    def __init__(self, *, cost: CostFn, large_cost: float = LARGE_COST) -> None:
        super().__init__()
        self.cost = cost
        self.large_cost = large_cost
        self._warned_nonfinite = False

    @classmethod
    def from_config(cls, cfg) -> "HungarianMatcher":
        mode = cfg.MODEL.MASK_FORMER.SUPERVISION
        if mode not in MATCHING_COSTS:
            raise KeyError(f"MODEL.MASK_FORMER.SUPERVISION = {mode!r} has no matching cost; "
                           f"registered in matcher.MATCHING_COSTS: {sorted(MATCHING_COSTS)}")
        return cls(cost=MATCHING_COSTS[mode](cfg))

    def set_iter(self, iteration: int) -> None:
        """Pass the training iteration to costs that warm up (e.g. the pairwise cost)."""
        if hasattr(self.cost, "set_iter"):
            self.cost.set_iter(iteration)

    def cost_matrix(self, outputs_b: Dict[str, torch.Tensor], target_b: Dict[str, torch.Tensor]) -> torch.Tensor:
        """(Q, N) finite fp32 cost of one image, computed with autocast off."""
        device_type = outputs_b["pred_logits"].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            cost = self.cost(outputs_b, target_b)
        num_queries, num_targets = outputs_b["pred_logits"].shape[0], target_b["labels"].shape[0]
        if cost.shape != (num_queries, num_targets):
            raise ValueError(f"{type(self.cost).__name__} returned a cost of shape {tuple(cost.shape)}; "
                             f"expected (num_queries, num_targets) = ({num_queries}, {num_targets})")
        cost, had_nonfinite = sanitize_cost(cost, self.large_cost)
        if had_nonfinite and not self._warned_nonfinite:
            logger.warning("non-finite matching cost from %s (NaN/inf in predictions?); replaced by ±%g "
                           "before linear_sum_assignment. Logged once.", type(self.cost).__name__, self.large_cost)
            self._warned_nonfinite = True
        return cost

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match every image of the batch.

        Args:
            outputs: ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, h, w) of one prediction head.
            targets: B dicts with at least ``labels`` (N_b,).

        Returns:
            B pairs ``(query_idx, gt_idx)`` of int64 CPU tensors with min(Q, N_b) entries, sorted by query.
        """
        indices = []
        for b, target_b in enumerate(targets):
            outputs_b = {k: v[b] for k, v in outputs.items() if isinstance(v, torch.Tensor)}
            num_queries, num_targets = outputs_b["pred_logits"].shape[0], target_b["labels"].shape[0]
            if num_targets == 0 or num_queries == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(outputs_b, target_b).cpu().double().numpy()
            rows, cols = linear_sum_assignment(cost)
            indices.append((torch.as_tensor(rows.astype(np.int64)), torch.as_tensor(cols.astype(np.int64))))
        return indices

    def extra_repr(self) -> str:
        return f"cost={type(self.cost).__name__}"


def build_matcher(cfg) -> HungarianMatcher:
    """The matcher for ``cfg.MODEL.MASK_FORMER.SUPERVISION``."""
    return HungarianMatcher.from_config(cfg)
