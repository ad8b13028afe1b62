"""Mask losses and matching costs of Mask2Former, evaluated on sampled points (PointRend).

Masks are compared at ``P`` points instead of every pixel. A point ``(x, y)`` lies in ``[0, 1]^2`` relative to
the mask's extent, so a stride-4 prediction and a full-resolution ground truth are sampled at the same place
(``point_sample`` handles the resolution mismatch). Losses average over the matched masks of the batch
(``num_masks``); costs are batched over every (query, ground truth) pair of one image.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

__all__ = [
    "point_sample",
    "calculate_uncertainty",
    "get_uncertain_point_coords_with_randomness",
    "sigmoid_ce_loss",
    "dice_loss",
    "batch_sigmoid_ce_cost",
    "batch_dice_cost",
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


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over points, summed over masks, divided by ``num_masks``.

    L = Σ_i (1/P) Σ_p −[t_ip·log σ(x_ip) + (1 − t_ip)·log(1 − σ(x_ip))] / num_masks

    Args:
        inputs: (M, P) logits.
        targets: (M, P) targets in [0, 1].
        num_masks: normaliser (number of GT masks in the batch, averaged over processes).

    Returns:
        Scalar loss.
    """
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Smoothed dice loss summed over masks, divided by ``num_masks``.

    L = Σ_i [1 − (2·Σ_p σ(x_ip)·t_ip + 1) / (Σ_p σ(x_ip) + Σ_p t_ip + 1)] / num_masks

    Args:
        inputs: (M, P) logits.
        targets: (M, P) targets in [0, 1].
        num_masks: normaliser.

    Returns:
        Scalar loss.
    """
    probs = inputs.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


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
