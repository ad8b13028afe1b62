"""BoxInst-M2F: what box-only supervision adds to Mask2Former (SPEC §3–4).

- :class:`BoxProjectionCost` — matching without masks: ``w_cls·(−p_cls) + w_proj·cost_proj``.
- :class:`BoxInstLoss` — the ``"boxinst"`` loss family: projection and pairwise terms on the full stride-4 masks
  of the matched queries, against the box masks and colour similarities of :func:`~.targets.box_targets`.
"""

from __future__ import annotations

from typing import Dict

import torch

from .criterion import Indices, LossContext, Targets, matched_logits, matched_rows
from .losses.boxinst import batch_projection_dice_cost, compute_pairwise_term, compute_project_term
from .pairwise_schedule import PairwiseSchedule

__all__ = ["BoxProjectionCost", "BoxInstLoss"]


class BoxProjectionCost:
    """Box-supervised matching cost of one image (SPEC §3).

    ``C = w_cls·(−softmax(logits)[:, tgt]) + w_proj·cost_proj``, with ``cost_proj`` the batched projection dice
    of each query's stride-4 mask against each GT box mask.
    """

    def __init__(self, *, cost_class: float, cost_projection: float) -> None:
        self.cost_class = cost_class
        self.cost_projection = cost_projection

    @classmethod
    def from_config(cls, cfg) -> "BoxProjectionCost":
        bi = cfg.MODEL.BOXINST
        return cls(cost_class=bi.MATCHER.COST_CLASS, cost_projection=bi.MATCHER.COST_PROJECTION)

    def __call__(self, outputs_b: Dict[str, torch.Tensor], target_b: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Args: ``pred_logits`` (Q, K+1), ``pred_masks`` (Q, h, w); target ``labels``, ``box_masks`` (N, h, w).
        Returns the (Q, N) fp32 cost."""
        cost = -self.cost_class * outputs_b["pred_logits"].float().softmax(-1)[:, target_b["labels"]]
        return cost + self.cost_projection * batch_projection_dice_cost(
            outputs_b["pred_masks"].float(), target_b["box_masks"]
        )


class BoxInstLoss:
    """The ``"boxinst"`` loss family: ``loss_proj`` and ``loss_pairwise`` of the matched queries of one head.

    ``loss_proj = Σ_k [dice(max_y m_k, max_y B_k) + dice(max_x m_k, max_x B_k)] / num_masks`` and
    ``loss_pairwise = factor · Σ_e −log P(y_i = y_j)·1[e counts] / max(#edges, 1)`` over all matched instances
    of the batch (BoxInst's global edge average), with the factor of the :class:`~.pairwise_schedule.PairwiseSchedule`
    at the context's iteration.
    """

    def __init__(self, *, color_thresh: float, kernel_size: int, dilation: int, schedule: PairwiseSchedule) -> None:
        self.color_thresh = color_thresh
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.schedule = schedule

    @classmethod
    def from_config(cls, cfg, schedule: PairwiseSchedule) -> "BoxInstLoss":
        pw = cfg.MODEL.BOXINST.PAIRWISE
        return cls(color_thresh=pw.COLOR_THRESH, kernel_size=pw.SIZE, dilation=pw.DILATION, schedule=schedule)

    def __call__(
        self, outputs: Dict[str, torch.Tensor], targets: Targets, indices: Indices, context: LossContext
    ) -> Dict[str, torch.Tensor]:
        pred_masks = outputs["pred_masks"]
        mask_logits = matched_logits(pred_masks, indices)  # (M, h, w)
        if mask_logits.shape[0] == 0:
            zero = pred_masks.sum() * 0.0
            return {"loss_proj": zero, "loss_pairwise": zero.clone()}
        box_masks = matched_rows(targets, indices, "box_masks")
        similarity = torch.cat(
            [t["color_similarity"][None].expand(len(gt), -1, -1, -1) for t, (_, gt) in zip(targets, indices)]
        )
        loss_proj = compute_project_term(mask_logits.sigmoid(), box_masks).sum() / context.num_masks
        total, count = compute_pairwise_term(
            mask_logits, similarity, box_masks, self.color_thresh, self.kernel_size, self.dilation
        )
        factor = self.schedule.factor(context.iteration)
        return {"loss_proj": loss_proj, "loss_pairwise": factor * total / count.clamp_min(1.0)}
