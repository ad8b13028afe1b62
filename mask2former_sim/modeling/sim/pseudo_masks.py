"""Instance-aware pseudo masks of SIM: positives, instance map M_I (Eq. 6), self-correction (Eq. 7), thresholds.

All maps are at the mask stride (``Hp/4 × Wp/4``) as probabilities in [0, 1]:

- :func:`mask_box_iou` — IoU of a mask's tight box (``σ(m) > 0.5``) with a GT box.
- :func:`positive_weights` — Eq. 6, ``w = exp(μ·IoU(box(σ(m) > 0.5), gt_box))`` normalised over the positives.
- :func:`instance_map` — ``M_I = Σ_p w_p·σ(m_p)``.
- :func:`instance_maps` — both of the above for every GT of an image in one pass (the positives of all GTs
  stacked, grouped by GT); the training path, checked against the per-GT functions.
- :func:`fuse_maps` — Eq. 7, ``M̂_prob = (1 − α)·M_S + α·M_I``.
- :func:`threshold_pseudo_mask` — labels 1 where ``M̂_prob ≥ τ_high``, 0 where ``≤ τ_low``; weight 0 in between
  and outside the supervised region (the GT box minus padding: the official code ignores pixels outside the
  box, which the projection term already pushes to background).
- :func:`full_resolution_pseudo_masks` — ``M̂`` at input resolution for the copy-paste bank (M̂_prob
  upsampled bilinearly, thresholded, restricted to the box region at input resolution).
- :func:`dynamic_tau_high` — the official code's per-instance τ_high (option).
- :func:`mask_score` — Eq. 11, ``S_k = mean(M̂_prob over M̂ = 1)`` (copy-paste importance).
- :func:`gather_positives` — the (head, query) pairs the student's Hungarian matching assigned to each GT.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from ..postprocessing import masks_to_boxes

__all__ = [
    "mask_box_iou",
    "positive_weights",
    "instance_map",
    "instance_maps",
    "fuse_maps",
    "threshold_pseudo_mask",
    "full_resolution_pseudo_masks",
    "dynamic_tau_high",
    "mask_score",
    "gather_positives",
]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def mask_box_iou(mask_probs: torch.Tensor, gt_boxes: torch.Tensor, stride: int) -> torch.Tensor:
    """IoU of the tight box of each ``mask_probs[p] > 0.5`` (mask-stride pixels scaled by ``stride`` to input
    pixels) with ``gt_boxes[p]`` (XYXY, input pixels): (P, h, w) and (P, 4) → (P,); an empty mask has IoU 0."""
    boxes = masks_to_boxes(mask_probs > 0.5) * stride
    return torch.nan_to_num(box_iou(boxes, gt_boxes.reshape(-1, 4).float()).diagonal(), nan=0.0)


def positive_weights(mask_probs: torch.Tensor, gt_box: torch.Tensor, stride: int, mu: float) -> torch.Tensor:
    """Eq. 6: ``w_p = exp(μ·IoU_p) / Σ_p' exp(μ·IoU_p')`` for the positive masks of one GT.

    ``IoU_p`` is the IoU between the tight box of ``σ(m_p) > 0.5`` (mask-stride pixels scaled by ``stride`` to
    input pixels; an empty mask has IoU 0) and the GT box.

    Args:
        mask_probs: (P, h, w) teacher mask probabilities of the positives.
        gt_box: (4,) XYXY in input pixels.
        stride: mask stride.
        mu: μ (SIM: 5).

    Returns:
        (P,) weights summing to 1.
    """
    iou = mask_box_iou(mask_probs, gt_box.reshape(1, 4).expand(len(mask_probs), 4), stride)
    return torch.softmax(mu * iou, dim=0)  # exp(μ·IoU) / Σ exp(μ·IoU)


def instance_map(mask_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``M_I = Σ_p w_p·σ(m_p)``: (P, h, w) probabilities and (P,) weights → (h, w)."""
    return torch.einsum("phw,p->hw", mask_probs, weights.to(mask_probs))


def instance_maps(
    mask_probs: torch.Tensor, gt_boxes: torch.Tensor, group: torch.Tensor, num_gts: int, stride: int, mu: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 for all GTs of an image at once: :func:`positive_weights` and :func:`instance_map` per GT, batched.

    Args:
        mask_probs: (P, h, w) teacher mask probabilities of the positives of every GT.
        gt_boxes: (P, 4) XYXY box (input pixels) of the GT each positive belongs to.
        group: (P,) int64, the GT (0..num_gts-1) of each positive.
        num_gts: K.
        stride: mask stride.
        mu: μ (SIM: 5).

    Returns:
        (P,) weights (softmax of μ·IoU within each GT) and (K, h, w) M_I (zero for a GT without positives).
    """
    h, w = mask_probs.shape[-2:]
    if mask_probs.shape[0] == 0:
        return mask_probs.new_zeros(0), mask_probs.new_zeros(num_gts, h, w)
    logits = mu * mask_box_iou(mask_probs, gt_boxes, stride)
    group_max = logits.new_full((num_gts,), float("-inf")).scatter_reduce(0, group, logits, "amax")
    exp = torch.exp(logits - group_max[group])  # exp(μ·IoU) up to a per-GT factor that cancels
    weights = exp / exp.new_zeros(num_gts).index_add(0, group, exp)[group]
    weighted = mask_probs * weights[:, None, None].to(mask_probs)
    return weights, mask_probs.new_zeros(num_gts, h, w).index_add(0, group, weighted)


def fuse_maps(semantic: torch.Tensor, instance: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 7 (self-correction): ``M̂_prob = (1 − α)·M_S + α·M_I``, (..., h, w) maps; α = 0.5 in SIM."""
    return (1.0 - alpha) * semantic + alpha * instance


def threshold_pseudo_mask(
    prob: torch.Tensor, tau_low: float, tau_high: torch.Tensor | float, region: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pseudo labels M̂ and the weight map W of Eq. 8.

    Args:
        prob: (..., h, w) M̂_prob.
        tau_low: pixels ``≤ τ_low`` are background (SIM Table 7: 0.3).
        tau_high: pixels ``≥ τ_high`` are foreground (0.7); a float or a (...,) tensor (one per instance).
        region: (..., h, w) bool, the supervised pixels: inside the GT box and not padding.

    Returns:
        labels (..., h, w) float, 1 where ``M̂_prob ≥ τ_high`` inside ``region``, else 0; weights (..., h, w)
        float, 1 inside ``region`` where ``M̂_prob ≤ τ_low`` or ``≥ τ_high``, 0 elsewhere (ignored).
    """
    if isinstance(tau_high, torch.Tensor):
        tau_high = tau_high.to(prob)[..., None, None]
    foreground = (prob >= tau_high) & region
    certain = foreground | ((prob <= tau_low) & region)
    return foreground.float(), certain.float()


def full_resolution_pseudo_masks(
    prob: torch.Tensor, tau_high: torch.Tensor, region: torch.Tensor, stride: int
) -> torch.Tensor:
    """M̂ at input resolution: ``up(M̂_prob) ≥ τ_high`` inside ``region``, for the copy-paste bank (SPEC §6).

    ``up`` is the bilinear ×``stride`` upsampling that inference applies to mask logits (cell ``i`` centred on
    input pixel ``stride·i + (stride − 1)/2``), so a pasted instance has the pseudo mask's outline at input
    resolution, not ``stride``×``stride`` blocks.

    Args:
        prob: (K, h, w) M̂_prob at the mask stride.
        tau_high: (K,) per-instance τ_high.
        region: (K, H, W) bool at input resolution (box raster, minus occluders and padding), H ≤ h·stride.
        stride: mask stride.

    Returns:
        (K, H, W) bool.
    """
    height, width = region.shape[-2:]
    up = F.interpolate(prob[None].float(), scale_factor=stride, mode="bilinear", align_corners=False)[0]
    return (up[:, :height, :width] >= tau_high.to(up)[:, None, None]) & region


def dynamic_tau_high(
    prob: torch.Tensor, inst: torch.Tensor, box_mask: torch.Tensor, instance_thresh: float,
    low: float, high: float,
) -> torch.Tensor:
    """The official code's per-instance τ_high (option ``DYNAMIC_TAU_HIGH``).

    With ``n = #{M_I > instance_thresh inside the box}``, τ_high is the (n+1)-th largest value of ``M̂_prob``
    inside the box, clamped to ``[low, high]`` (0.7, 0.8): roughly as many pixels become foreground as the
    teacher's instance map is confident about.

    Args:
        prob: (K, h, w) M̂_prob; inst: (K, h, w) M_I; box_mask: (K, h, w).

    Returns:
        (K,) thresholds.
    """
    inside = box_mask > 0
    taus = []
    for p, m, b in zip(prob, inst, inside):
        values = p[b]
        if values.numel() == 0:
            taus.append(prob.new_tensor(high))
            continue
        n = int(((m > instance_thresh) & b).sum())
        ranked = values.sort(descending=True).values
        taus.append(ranked[min(n, values.numel() - 1)])
    return torch.stack(taus).clamp(low, high) if taus else prob.new_zeros(0)


def mask_score(prob: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 11: ``S_k = Σ M̂_prob·1(M̂ = 1) / Σ 1(M̂ = 1)`` per instance, (K, h, w) → (K,) (0 for empty masks)."""
    fg = labels.flatten(1) > 0
    return (prob.flatten(1) * fg).sum(1) / fg.sum(1).clamp_min(1)


def gather_positives(
    indices_per_head: Sequence[Indices], image: int, gts: Sequence[int], heads: Sequence[int]
) -> List[Tuple[int, int, int]]:
    """(head, query, k) for every query matched to ``gts[k]`` in image ``image`` at each of ``heads``.

    Ordered by head (in the order of ``heads``), then as the matcher listed the pairs.

    Args:
        indices_per_head: per head, per image ``(query_idx, gt_idx)`` (``SetCriterion.match``; CPU tensors).
        gts: GT indices to collect (e.g. the non-pasted ones).
        heads: head positions to use (all heads, or only the final one at position 0).
    """
    position = {gt: k for k, gt in enumerate(gts)}
    triples = []
    for h in heads:
        src, tgt = indices_per_head[h][image]
        for q, gt in zip(src.tolist(), tgt.tolist()):
            if gt in position:
                triples.append((h, q, position[gt]))
    return triples
