"""Instance-aware pseudo masks of SIM: positives, instance map M_I (Eq. 6), self-correction (Eq. 7), thresholds.

All maps are at the mask stride (``Hp/4 × Wp/4``) as probabilities in [0, 1]:

- :func:`instance_maps` — Eq. 6: the positives' weights ``w = exp(μ·IoU(box(σ(m) > 0.5), gt_box))`` normalised
  per GT and ``M_I = Σ_p w_p·σ(m_p)``, for every GT of an image in one pass.
- :func:`fuse_maps` — Eq. 7, ``M̂_prob = (1 − α)·M_S + α·M_I``.
- :func:`threshold_pseudo_mask` — labels 1 where ``M̂_prob ≥ τ_high``, 0 where ``≤ τ_low``, inside the GT box;
  weight 0 in between and on padding. Outside the box :class:`PseudoMaskGenerator` makes a pixel certain
  background (``MODEL.SIM.OUTSIDE_BOX background``) or ignores it (``ignore``, the official code).
- :func:`full_resolution_pseudo_masks` — ``M̂`` at input resolution for the copy-paste bank (M̂_prob
  upsampled bilinearly, thresholded, restricted to the box region at input resolution).
- :func:`mask_score` — Eq. 11, ``S_k = mean(M̂_prob over M̂ = 1)`` (copy-paste importance).
- :func:`gather_positives` — the (head, query) pairs the student's Hungarian matching assigned to each GT.
- :class:`PseudoMaskGenerator` — all of the above for the original (non-pasted) GTs of a batch.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..box_fit import mask_box_iou
from ..criterion import prediction_heads
from ..targets import Indices, Targets
from .prototypes import semantic_map

__all__ = [
    "instance_maps",
    "fuse_maps",
    "threshold_pseudo_mask",
    "full_resolution_pseudo_masks",
    "mask_score",
    "gather_positives",
    "positives_by_gt",
    "PseudoMaskGenerator",
]

OUTSIDE_BOX = ("background", "ignore")


def instance_maps(
    mask_probs: torch.Tensor, gt_boxes: torch.Tensor, group: torch.Tensor, num_gts: int, stride: int, mu: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 for all GTs of an image at once: ``w_p = exp(μ·IoU_p) / Σ_p' exp(μ·IoU_p')`` over the positives
    of each GT and ``M_I^k = Σ_p w_p·σ(m_p)``, with ``IoU_p`` the IoU of the tight box of ``σ(m_p) > 0.5``
    (:func:`mask_box_iou`; an empty mask has IoU 0) with the GT box.

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
    """M̂ at input resolution: ``up(M̂_prob) ≥ τ_high`` inside ``region``, for the copy-paste bank (SIM §3.3).

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
        heads: head positions to use (position 0 is the final head).
    """
    position = {gt: k for k, gt in enumerate(gts)}
    triples = []
    for h in heads:
        src, tgt = indices_per_head[h][image]
        for q, gt in zip(src.tolist(), tgt.tolist()):
            if gt in position:
                triples.append((h, q, position[gt]))
    return triples


def positives_by_gt(
    triples: Sequence[Tuple[int, int, int]], weights: torch.Tensor, num_gts: int
) -> List[List[Tuple[int, int, float]]]:
    """Per GT, its positives as (head, query, Eq. 6 weight): ``triples`` of :func:`gather_positives` with their
    weights (a debugging view: it reads the weights back from the device)."""
    positives: List[List[Tuple[int, int, float]]] = [[] for _ in range(num_gts)]
    for (head, query, k), weight in zip(triples, weights.tolist()):
        positives[k].append((head, query, weight))
    return positives


class PseudoMaskGenerator:
    """SIM's pseudo masks (Eq. 1, 6, 7 and the thresholds) for the original (non-pasted) GTs of a batch.

    Args:
        stride: mask stride.
        proto_temperature: τ of Eq. 1.
        iou_mu: μ of Eq. 6; alpha: α of Eq. 7; tau_low, tau_high: pseudo-label thresholds (τ_high is the same
            for every instance; the results carry it per instance for the copy-paste bank).
        instance_map_thresh: M_I threshold of the prototype pixels before START_ITER (read by the SIM supervisor).
        outside_box: pixels outside the GT box are certain "background" for the pseudo loss, or "ignore"d
            (weight 0, the official code's choice; docs/DESIGN.md).

    ``record_positives`` (False; the pseudo-mask visualiser sets it) adds each GT's positives as Python lists to the
    results, which waits for the device once per image: a debugging aid, off in training.
    """

    record_positives = False

    def __init__(
        self,
        *,
        stride: int,
        proto_temperature: float,
        iou_mu: float,
        alpha: float,
        tau_low: float,
        tau_high: float,
        instance_map_thresh: float,
        outside_box: str = "background",
    ) -> None:
        if outside_box not in OUTSIDE_BOX:
            raise ValueError(f"MODEL.SIM.OUTSIDE_BOX must be one of {OUTSIDE_BOX}, found {outside_box!r}")
        if not 0.0 <= tau_low <= tau_high <= 1.0:
            raise ValueError(
                f"MODEL.SIM.TAU_LOW / TAU_HIGH must satisfy 0 <= low <= high <= 1, found {tau_low} / {tau_high}"
            )
        self.stride = stride
        self.proto_temperature = proto_temperature
        self.iou_mu = iou_mu
        self.alpha = alpha
        self.tau_low = tau_low
        self.tau_high = tau_high
        self.instance_map_thresh = instance_map_thresh
        self.outside_box = outside_box

    @classmethod
    def from_config(cls, cfg) -> "PseudoMaskGenerator":
        sim = cfg.MODEL.SIM
        return cls(
            stride=cfg.MODEL.BOXINST.MASK_STRIDE,
            proto_temperature=sim.PROTO_TEMPERATURE,
            iou_mu=sim.IOU_MU,
            alpha=sim.ALPHA,
            tau_low=sim.TAU_LOW,
            tau_high=sim.TAU_HIGH,
            instance_map_thresh=sim.INSTANCE_MAP_THRESH,
            outside_box=sim.OUTSIDE_BOX,
        )

    @torch.no_grad()
    def __call__(
        self,
        teacher_outputs: Dict[str, Any],
        targets: Targets,
        indices_per_head: Sequence[Indices],
        prototypes: torch.Tensor,
    ) -> List[Dict[str, Any]]:
        """Eq. 1, 6, 7 for every non-pasted GT of every image.

        Args:
            teacher_outputs: the teacher's heads and ``mask_features`` Z' (B, D, h, w).
            targets: the batch's targets (``labels``, ``boxes``, ``padding_mask``, ``box_masks``, ``pasted``).
            indices_per_head: the student's matches of every head.
            prototypes: (C, L, D) unit-norm prototypes.

        The positives of a GT are its matched queries at every prediction head.

        Returns:
            per image ``{"gt": (K,) GT indices, "semantic", "instance", "prob", "labels", "weights", "region"
            (box ∧ ¬padding), "box_masks": (K, h, w), "tau_high": (K,) (τ_high of each instance)}``; with
            ``record_positives`` also ``"positives"``: K lists of (head, query, weight).
        """
        heads = [head for _, head in prediction_heads(teacher_outputs)][: len(indices_per_head)]
        head_ids = list(range(len(heads)))
        features = F.normalize(teacher_outputs["mask_features"].float(), dim=1)
        results = []
        device = features.device
        for b, target in enumerate(targets):
            pasted = target.get("pasted")
            gt_list = list(range(len(target["labels"])))
            if pasted is not None:
                gt_list = [k for k, is_pasted in enumerate(pasted.tolist()) if not is_pasted]
            gts = torch.tensor(gt_list, dtype=torch.int64, device=device)
            valid = ~target["padding_mask"][self.stride // 2 :: self.stride, self.stride // 2 :: self.stride]
            # Eq. 6 for all GTs at once: positives ordered by head, so one gather per head
            triples = gather_positives(indices_per_head, b, gt_list, head_ids)
            queries = {
                hd: torch.tensor([q for h, q, _ in triples if h == hd], dtype=torch.int64, device=device)
                for hd in head_ids
            }
            probs = torch.cat([heads[hd]["pred_masks"][b, queries[hd]].float() for hd in head_ids]).sigmoid()
            group = torch.tensor([k for _, _, k in triples], dtype=torch.int64, device=device)
            positive_weights, inst = instance_maps(
                probs, target["boxes"][gts][group], group, len(gt_list), self.stride, self.iou_mu
            )
            box_masks = target["box_masks"][gts].float()
            classes, class_row = target["labels"][gts].unique(return_inverse=True)  # one map per class present
            sem = semantic_map(features[b], prototypes[classes], self.proto_temperature)[class_row]
            prob = fuse_maps(sem, inst, self.alpha)
            tau_high = prob.new_full((len(gts),), self.tau_high)
            region = (box_masks > 0) & valid  # labels come from M̂ only inside the box
            labels, weights = threshold_pseudo_mask(prob, self.tau_low, tau_high, region)
            if self.outside_box == "background":  # outside its box (on real pixels) a pixel is certain background
                weights = torch.where(region, weights, valid.to(weights).expand_as(weights))
            result = {
                "gt": gts,
                "semantic": sem,
                "instance": inst,
                "prob": prob,
                "labels": labels,
                "weights": weights,
                "tau_high": tau_high,
                "region": region,
                "box_masks": box_masks,
            }
            if self.record_positives:
                result["positives"] = positives_by_gt(triples, positive_weights, len(gt_list))
            results.append(result)
        return results

    def __repr__(self) -> str:
        return (
            f"PseudoMaskGenerator(alpha={self.alpha}, tau=({self.tau_low}, {self.tau_high}), "
            f"temperature={self.proto_temperature}, outside_box={self.outside_box!r})"
        )
