"""Mask2Former's own supervision (``SUPERVISION mask``): mask losses and matching costs on sampled points (PointRend),
and the one weighted BCE / dice that SIM's losses (Eq. 8, 9) reuse.

- :func:`sigmoid_ce_loss`, :func:`dice_loss` — per-mask BCE and dice (optionally pixel-weighted);
- :class:`MaskCost` — the matching cost ``w_cls·(−p_cls) + w_mask·BCE + w_dice·dice`` on shared random points;
- :class:`PointSampledMaskLoss` — the ``"masks"`` loss family (``loss_mask``, ``loss_dice``);
- :class:`MaskTargets` — the supervision part that puts the GT masks into the targets.

Masks are compared at ``P`` points instead of every pixel. A point ``(x, y)`` lies in ``[0, 1]^2`` relative to
the mask's extent, so a stride-4 prediction and a full-resolution ground truth are sampled at the same place
(``point_sample`` handles the resolution mismatch). Losses average over the matched masks of the batch
(``num_masks``); costs are batched over every (query, ground truth) pair of one image.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from ..criterion import LossContext, batch_instances, matched_logits, matched_rows
from ..targets import ImageTarget, Indices, SupervisionPart, Targets

__all__ = [
    "point_sample",
    "calculate_uncertainty",
    "get_uncertain_point_coords_with_randomness",
    "sigmoid_ce_loss",
    "dice_loss",
    "batch_sigmoid_ce_cost",
    "batch_dice_cost",
    "MaskCost",
    "PointSampledMaskLoss",
    "MaskTargets",
]


def point_sample(input: torch.Tensor, point_coords: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Bilinear values of ``input`` at relative points: ``grid_sample(input, 2 * point_coords - 1)``.

    Args:
        input: (N, C, H, W) maps.
        point_coords: (N, P, 2) or (N, Hg, Wg, 2) points as (x, y) in [0, 1] of the map's extent.
        align_corners: as ``F.grid_sample``; False treats [0, 1] as the outer pixel borders.

    Returns:
        (N, C, P) for (N, P, 2) points, else (N, C, Hg, Wg).
    """
    flat = point_coords.dim() == 3
    grid = point_coords.unsqueeze(2) if flat else point_coords
    output = F.grid_sample(input, 2.0 * grid - 1.0, align_corners=align_corners)
    return output.squeeze(3) if flat else output


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty u = −|logit| (highest at the decision boundary, logit 0).

    Args:
        logits: (N, 1, ...) mask logits of one class-agnostic channel.

    Returns:
        Tensor of the same shape.
    """
    if logits.shape[1] != 1:
        raise ValueError(f"calculate_uncertainty expects one channel (N, 1, ...), found shape {tuple(logits.shape)}")
    return -torch.abs(logits)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_func: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """PointRend importance sampling: the most uncertain of ``k·P`` random points plus fresh random points.

    ``k·P`` uniform points are drawn (k = ``oversample_ratio``); the ``β·P`` with the highest
    ``uncertainty_func`` (β = ``importance_sample_ratio``) are kept and ``(1 − β)·P`` new uniform points are added.

    Args:
        coarse_logits: (N, 1, H, W) mask logits.
        uncertainty_func: maps (N, 1, S) point logits to (N, 1, S) uncertainties.
        num_points: P.
        oversample_ratio: k ≥ 1.
        importance_sample_ratio: β in [0, 1].
        generator: optional RNG on ``coarse_logits.device`` for reproducible sampling.

    Returns:
        (N, P, 2) points (x, y) in [0, 1].
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, found {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], found {importance_sample_ratio}")
    num_boxes = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    device, dtype = coarse_logits.device, coarse_logits.dtype
    point_coords = torch.rand(num_boxes, num_sampled, 2, device=device, dtype=dtype, generator=generator)
    point_logits = point_sample(coarse_logits, point_coords, align_corners=False)
    point_uncertainties = uncertainty_func(point_logits)
    num_uncertain_points = int(importance_sample_ratio * num_points)
    num_random_points = num_points - num_uncertain_points
    # only the kept set matters (the losses average over points), so the top-k is not sorted
    idx = torch.topk(point_uncertainties[:, 0, :], k=num_uncertain_points, dim=1, sorted=False)[1]
    idx = idx + num_sampled * torch.arange(num_boxes, dtype=torch.long, device=device)[:, None]
    point_coords = point_coords.view(-1, 2)[idx.view(-1), :].view(num_boxes, num_uncertain_points, 2)
    if num_random_points > 0:
        extra = torch.rand(num_boxes, num_random_points, 2, device=device, dtype=dtype, generator=generator)
        point_coords = torch.cat([point_coords, extra], dim=1)
    return point_coords


def sigmoid_ce_loss(
    inputs: torch.Tensor, targets: torch.Tensor, num_masks: float, weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Binary cross-entropy with logits per mask, summed over masks, divided by ``num_masks``.

    ``L = Σ_i (1/P) Σ_p BCE(x_ip, t_ip) / num_masks``; with ``weights`` W (SIM Eq. 8: 0 on ignored pixels),
    ``L = Σ_i [Σ_p W_ip·BCE(x_ip, t_ip) / max(Σ_p W_ip, 1)] / num_masks`` (equal to the former for W = 1).

    Args:
        inputs: (M, P) logits (or (M, h, w): flattened).
        targets: (M, P) targets in [0, 1].
        num_masks: normaliser (the masks the loss supervises in the batch, averaged over processes).
        weights: (M, P) pixel weights, or None.

    Returns:
        Scalar loss.
    """
    if weights is None:
        loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
        return loss.mean(1).sum() / num_masks
    inputs, targets, weights = inputs.flatten(1).float(), targets.flatten(1).float(), weights.flatten(1).float()
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    per_mask = (loss * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return per_mask.sum() / num_masks


def dice_loss(
    inputs: torch.Tensor, targets: torch.Tensor, num_masks: float, weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Smoothed dice loss summed over masks, divided by ``num_masks``.

    ``L = Σ_i [1 − (2·Σ_p σ(x_ip)·t_ip + 1) / (Σ_p σ(x_ip) + Σ_p t_ip + 1)] / num_masks``; with ``weights``, the sums
    run over the pixels of weight > 0 only (SIM Eq. 8's ignored band drops out; a BCE weighting that is not binary
    still selects the same pixels).

    Args:
        inputs: (M, P) logits (or (M, h, w): flattened).
        targets: (M, P) targets in [0, 1].
        num_masks: normaliser.
        weights: (M, P) pixel weights, or None.

    Returns:
        Scalar loss.
    """
    if weights is None:
        probs = inputs.sigmoid()
        numerator = 2 * (probs * targets).sum(-1)
        denominator = probs.sum(-1) + targets.sum(-1)
        loss = 1 - (numerator + 1) / (denominator + 1)
        return loss.sum() / num_masks
    probs = inputs.flatten(1).float().sigmoid()
    targets, weights = targets.flatten(1).float(), (weights.flatten(1) > 0).float()
    numerator = 2.0 * (weights * probs * targets).sum(1)
    denominator = (weights * probs).sum(1) + (weights * targets).sum(1)
    return (1.0 - (numerator + 1.0) / (denominator + 1.0)).sum() / num_masks


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean BCE between every predicted mask and every target mask.

    C_qn = (1/P) Σ_p [BCE(x_qp, 1)·t_np + BCE(x_qp, 0)·(1 − t_np)] = (1/P) [Σ_p softplus(x_qp) − Σ_p x_qp·t_np]

    (BCE(x, t) = softplus(x) − x·t for any t in [0, 1]), so one (Q, P) × (P, N) product gives the cost.

    Args:
        inputs: (Q, P) logits.
        targets: (N, P) targets in [0, 1].

    Returns:
        (Q, N) cost.
    """
    num_points = inputs.shape[1]
    cost = F.softplus(inputs).sum(-1, keepdim=True) - inputs @ targets.transpose(0, 1)
    return cost / num_points


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise smoothed dice loss between every predicted mask and every target mask.

    C_qn = 1 − (2·Σ_p σ(x_qp)·t_np + 1) / (Σ_p σ(x_qp) + Σ_p t_np + 1)

    Args:
        inputs: (Q, P) logits.
        targets: (N, P) targets in [0, 1].

    Returns:
        (Q, N) cost.
    """
    probs = inputs.sigmoid()
    numerator = 2 * (probs @ targets.transpose(0, 1))
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


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

    def __call__(self, outputs_b: Dict[str, torch.Tensor], target_b: ImageTarget) -> torch.Tensor:
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

    def num_instances(self, targets: Targets) -> int:
        """All GTs of the batch (Mask2Former's ``num_masks``)."""
        return batch_instances(targets)

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


class MaskTargets(SupervisionPart):
    """The part of mask supervision: the GT masks ``masks`` (N, Hp, Wp) bool at the padded input size."""

    def build_targets(self, targets: Targets, batched_inputs: Sequence[Dict[str, Any]], iteration: int) -> Targets:
        out = []
        for i, (target, x) in enumerate(zip(targets, batched_inputs)):
            inst = x["instances"]
            if "gt_masks" not in inst:
                raise KeyError(
                    f"training input {i}: SUPERVISION 'mask' needs instances['gt_masks'] (keys: "
                    f"{sorted(inst)}); use a dataset with segmentations or a box supervision mode"
                )
            gt_masks = inst["gt_masks"].to(target["labels"].device, dtype=torch.bool)
            hp, wp = target["padding_mask"].shape
            masks = torch.zeros(gt_masks.shape[0], hp, wp, dtype=torch.bool, device=gt_masks.device)
            masks[:, : gt_masks.shape[-2], : gt_masks.shape[-1]] = gt_masks
            out.append({**target, "masks": masks})
        return out
