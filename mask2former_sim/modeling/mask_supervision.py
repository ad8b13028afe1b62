"""Mask2Former's own supervision (``SUPERVISION mask``): matching cost and mask losses against GT masks.

- :class:`MaskCost` — ``w_cls·(−p_cls) + w_mask·BCE + w_dice·dice`` on one shared set of random points per image.
- :class:`PointSampledMaskLoss` — the ``"masks"`` loss family: point-sampled BCE and dice of the matched queries
  (PointRend importance sampling), ``loss_mask`` and ``loss_dice``.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from .criterion import Indices, LossContext, Targets, matched_logits, matched_rows
from .losses.mask import (
    batch_dice_cost,
    batch_sigmoid_ce_cost,
    calculate_uncertainty,
    dice_loss,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    sigmoid_ce_loss,
)

__all__ = ["MaskCost", "PointSampledMaskLoss"]


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
            raise KeyError(
                "MaskCost needs target 'masks' (SUPERVISION 'mask'); the targets have "
                f"{sorted(target_b)}. Use the box cost for 'box'/'sim' supervision."
            )
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


class PointSampledMaskLoss:
    """The ``"masks"`` family: point-sampled BCE and dice between matched stride-4 mask logits and GT masks
    (padded input resolution).

    Points are importance sampled on the predictions (no gradient); both maps are read at the same relative
    points, so their resolutions may differ.

    Args:
        num_points: P points per mask.
        oversample_ratio: PointRend oversampling k.
        importance_sample_ratio: PointRend fraction β of uncertain points.
        generator: optional RNG on the outputs' device for reproducible point sampling (see also
            :meth:`sample_points`, which a test may replace to make sampling independent of the batch layout).
    """

    def __init__(
        self,
        *,
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.generator = generator

    @classmethod
    def from_config(cls, cfg) -> "PointSampledMaskLoss":
        mf = cfg.MODEL.MASK_FORMER
        return cls(
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        )

    def sample_points(self, src_masks: torch.Tensor) -> torch.Tensor:
        """(M, P, 2) importance-sampled points for (M, 1, h, w) mask logits; replace to control sampling in tests."""
        return get_uncertain_point_coords_with_randomness(
            src_masks,
            calculate_uncertainty,
            self.num_points,
            self.oversample_ratio,
            self.importance_sample_ratio,
            generator=self.generator,
        )

    def __call__(
        self, outputs: Dict[str, torch.Tensor], targets: Targets, indices: Indices, context: LossContext
    ) -> Dict[str, torch.Tensor]:
        pred_masks = outputs["pred_masks"]
        src_masks = matched_logits(pred_masks, indices)
        if src_masks.shape[0] == 0:
            zero = pred_masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        src_masks = src_masks[:, None]
        target_masks = matched_rows(targets, indices, "masks").to(src_masks)[:, None]
        with torch.no_grad():
            point_coords = self.sample_points(src_masks)
            point_labels = point_sample(target_masks, point_coords).squeeze(1)
        point_logits = point_sample(src_masks, point_coords).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, context.num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, context.num_masks),
        }
