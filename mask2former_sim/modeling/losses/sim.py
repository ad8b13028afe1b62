"""SIM's mask losses on full stride-4 mask logits (Li et al., CVPR 2023, Eq. 8 and 9).

``ℓ_mask`` is binary cross-entropy plus dice, both on LOGITS, with a per-pixel weight map ``W`` that is 0 on
ignored pixels (the band ``τ_low < M̂_prob < τ_high`` and padding). The official code instead applied a focal
loss to probabilities as if they were logits; that is not reproduced here.

Shapes: ``M`` instances, ``P`` pixels per instance (flattened ``h·w``). Every loss sums over instances and divides
by ``num_masks``, the number of instances the loss supervises in the batch (averaged over processes): the original
instances for L_pseudo (Eq. 8, N_pos), the pasted ones for L_paste (Eq. 9).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["weighted_bce_with_logits", "weighted_dice_loss", "weighted_mask_loss"]


def weighted_bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, num_masks: float
) -> torch.Tensor:
    """Eq. 8, BCE term: ``Σ_k [Σ_i W_ki·BCE(x_ki, t_ki) / max(Σ_i W_ki, 1)] / num_masks``.

    Args:
        logits: (M, P) mask logits.
        targets: (M, P) labels in {0, 1}.
        weights: (M, P) pixel weights (0 = ignored).
        num_masks: normaliser.

    Returns:
        Scalar loss.
    """
    logits, targets, weights = logits.flatten(1).float(), targets.flatten(1).float(), weights.flatten(1).float()
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    per_mask = (loss * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return per_mask.sum() / num_masks


def weighted_dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, num_masks: float
) -> torch.Tensor:
    """Eq. 8, dice term: ``Σ_k [1 − (2·Σ W p t + 1) / (Σ W p + Σ W t + 1)] / num_masks`` with ``p = σ(x)``.

    Mask2Former's smoothed dice, restricted to the pixels with weight > 0 (W is binary here: a BCE weighting
    that is not, e.g. region-normalised, still selects the same pixels).

    Args:
        logits: (M, P) mask logits.
        targets: (M, P) labels in {0, 1}.
        weights: (M, P) pixel weights (0 = ignored).
        num_masks: normaliser.

    Returns:
        Scalar loss.
    """
    probs = logits.flatten(1).float().sigmoid()
    targets, weights = targets.flatten(1).float(), (weights.flatten(1) > 0).float()
    numerator = 2.0 * (weights * probs * targets).sum(1)
    denominator = (weights * probs).sum(1) + (weights * targets).sum(1)
    return (1.0 - (numerator + 1.0) / (denominator + 1.0)).sum() / num_masks


def weighted_mask_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, num_masks: float
) -> torch.Tensor:
    """SIM's ``ℓ_mask`` = weighted BCE + weighted dice, summed over instances and divided by ``num_masks``.

    Eq. 8: ``L_pseudo = 1/N Σ_k ℓ_mask(M_pred^k, M̂_k, W_k)`` against the pseudo masks, W = 1 where
    ``M̂_prob ≤ τ_low`` or ``≥ τ_high`` inside the box; Eq. 9: ``L_paste = Σ_k 1_paste·ℓ_mask(M_pred^k, M̂'^k)``
    against the pasted instances' bank masks, W = 1 on real image pixels.

    Args:
        logits: (M, h, w) or (M, P) student mask logits of the matched queries.
        labels: targets in {0, 1}, same shape.
        weights: W (0 = ignored), same shape.
        num_masks: normaliser (number of instances).

    Returns:
        Scalar loss.
    """
    return weighted_bce_with_logits(logits, labels, weights, num_masks) + weighted_dice_loss(
        logits, labels, weights, num_masks
    )
