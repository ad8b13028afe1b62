"""Hungarian matching of predicted queries to ground-truth instances, one image and one head at a time.

``HungarianMatcher`` owns what every supervision mode shares: no gradients, fp32 costs with autocast off,
sanitising non-finite costs so ``scipy.optimize.linear_sum_assignment`` never sees NaN or ±inf, and the empty
and rectangular cases. What the cost *is* comes from the cost object it is given, ``cost(outputs_b, target_b)
-> (Q, N)``: :func:`~.supervision.build_supervision` picks it per supervision mode (Mask2Former's
:class:`~.losses.mask.MaskCost`, or the box cost :class:`~.losses.boxinst.BoxProjectionCost`).
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .targets import ImageTarget, Indices, Targets

__all__ = ["HungarianMatcher", "sanitize_cost"]

logger = logging.getLogger(__name__)

CostFn = Callable[[Dict[str, torch.Tensor], ImageTarget], torch.Tensor]

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


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground truths minimising a per-image cost matrix.

    Args:
        cost: callable ``(outputs_b, target_b) -> (Q, N)`` (e.g. :class:`~.losses.mask.MaskCost`).
        large_cost: replacement for non-finite costs (see :func:`sanitize_cost`).
    """

    def __init__(self, *, cost: CostFn, large_cost: float = LARGE_COST) -> None:
        super().__init__()
        self.cost = cost
        self.large_cost = large_cost
        self._warned_nonfinite = False

    def cost_matrix(self, outputs_b: Dict[str, torch.Tensor], target_b: ImageTarget) -> torch.Tensor:
        """(Q, N) finite fp32 cost of one image, computed with autocast off."""
        device_type = outputs_b["pred_logits"].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            cost = self.cost(outputs_b, target_b)
        num_queries, num_targets = outputs_b["pred_logits"].shape[0], target_b["labels"].shape[0]
        if cost.shape != (num_queries, num_targets):
            raise ValueError(
                f"{type(self.cost).__name__} returned a cost of shape {tuple(cost.shape)}; "
                f"expected (num_queries, num_targets) = ({num_queries}, {num_targets})"
            )
        cost, had_nonfinite = sanitize_cost(cost, self.large_cost)
        if had_nonfinite and not self._warned_nonfinite:
            logger.warning(
                "non-finite matching cost from %s (NaN/inf in predictions?); replaced by ±%g "
                "before linear_sum_assignment. Logged once.",
                type(self.cost).__name__,
                self.large_cost,
            )
            self._warned_nonfinite = True
        return cost

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor], targets: Targets) -> Indices:
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
