"""BoxInst-M2F: what box-only supervision adds to Mask2Former (SPEC §3–4).

- :func:`add_box_targets` — per image, the GT box masks at the mask stride and the colour similarity of the
  image's pixels with their neighbours (computed once per batch, reused by every head and by the matcher).
- :class:`BoxProjectionCost` — matching without masks: ``w_cls·(−p_cls) + w_proj·cost_proj``.
- :class:`BoxInstLoss` — the ``"boxinst"`` loss family of :class:`~.criterion.SetCriterion`: projection and
  pairwise terms on the full stride-4 masks of the matched queries.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from .losses.boxinst import (
    batch_projection_dice_cost,
    boxes_to_stride_masks,
    compute_pairwise_term,
    compute_project_term,
    images_color_similarity,
)

__all__ = [
    "add_box_targets",
    "pairwise_warmup_factor",
    "BoxProjectionCost",
    "build_box_matching_cost",
    "BoxInstLoss",
]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def pairwise_warmup_factor(iteration: int, warmup_iters: int, start_iter: int = 0) -> float:
    """Weight factor of the pairwise term: 0 before ``start_iter``, then a linear warm-up over ``warmup_iters``.

    ``clip((iteration − start_iter) / warmup_iters, 0, 1)``; with ``start_iter`` 0 this is BoxInst's warm-up.
    """
    if iteration < start_iter:
        return 0.0
    if warmup_iters <= 0:
        return 1.0
    return min(float(iteration - start_iter) / float(warmup_iters), 1.0)


def _remove_bottom_rows(valid: torch.Tensor, rows: int) -> torch.Tensor:
    """Mark the last ``rows`` rows of real image content of every image invalid (BoxInst's bottom-pixel removal)."""
    if rows <= 0:
        return valid
    valid = valid.clone()
    row_has_content = valid.any(dim=2)  # (B, H)
    height = valid.shape[1]
    last = torch.where(row_has_content, torch.arange(height, device=valid.device), -1).amax(dim=1)
    for b, last_row in enumerate(last.tolist()):
        if last_row >= 0:
            valid[b, max(last_row + 1 - rows, 0) : last_row + 1] = False
    return valid


@torch.no_grad()
def add_box_targets(
    targets: List[Dict[str, torch.Tensor]],
    raw_images: torch.Tensor,
    stride: int,
    kernel_size: int,
    dilation: int,
    theta: float,
    bottom_pixels_removed: int = 0,
) -> None:
    """Add ``box_masks`` (N, Hp/s, Wp/s) and ``color_similarity`` (k²−1, Hp/s, Wp/s) to every target, in place.

    Args:
        targets: per-image dicts with ``boxes`` (N, 4) XYXY input pixels and ``padding_mask`` (Hp, Wp).
        raw_images: (B, 3, Hp, Wp) un-normalised RGB 0–255, zero-padded like the network input.
    """
    hp, wp = raw_images.shape[-2:]
    if hp % stride or wp % stride:
        raise ValueError(f"padded input {hp}x{wp} must be divisible by MODEL.BOXINST.MASK_STRIDE = {stride}")
    valid = ~torch.stack([t["padding_mask"] for t in targets])
    valid = _remove_bottom_rows(valid, bottom_pixels_removed)
    similarity = images_color_similarity(raw_images, valid, stride, kernel_size, dilation, theta)
    for target, sim in zip(targets, similarity):
        target["box_masks"] = boxes_to_stride_masks(target["boxes"], hp, wp, stride)
        target["color_similarity"] = sim


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
        return cost + self.cost_projection * batch_projection_dice_cost(outputs_b["pred_masks"].float(),
                                                                        target_b["box_masks"])


def build_box_matching_cost(cfg) -> BoxProjectionCost:
    """The box matching cost: class + projection dice (``MODEL.BOXINST.MATCHER``)."""
    return BoxProjectionCost.from_config(cfg)


class BoxInstLoss:
    """The ``"boxinst"`` loss family: ``loss_proj`` and ``loss_pairwise`` of the matched queries of one head.

    ``loss_proj = Σ_k [dice(max_y m_k, max_y B_k) + dice(max_x m_k, max_x B_k)] / num_masks`` and
    ``loss_pairwise = warmup · Σ_e −log P(y_i = y_j)·1[e counts] / max(#edges, 1)`` over all matched instances
    of the batch (BoxInst's global edge average).
    """

    def __init__(
        self, *, color_thresh: float, kernel_size: int, dilation: int, warmup_iters: int, start_iter: int = 0,
    ) -> None:
        self.color_thresh = color_thresh
        self.start_iter = start_iter
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.warmup_iters = warmup_iters
        self.current_iter = 0

    @classmethod
    def from_config(cls, cfg) -> "BoxInstLoss":
        pw = cfg.MODEL.BOXINST.PAIRWISE
        return cls(color_thresh=pw.COLOR_THRESH, kernel_size=pw.SIZE, dilation=pw.DILATION,
                   warmup_iters=pw.WARMUP_ITERS, start_iter=pw.START_ITER)

    def set_iter(self, iteration: int) -> None:
        self.current_iter = int(iteration)

    def __call__(
        self, outputs: Dict[str, torch.Tensor], targets: Sequence[Dict[str, torch.Tensor]], indices: Indices,
        num_masks: float,
    ) -> Dict[str, torch.Tensor]:
        pred_masks = outputs["pred_masks"]
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(pred_masks.device)
        src_idx = torch.cat([src for src, _ in indices]).to(pred_masks.device)
        mask_logits = pred_masks[batch_idx, src_idx].float()  # (M, h, w)
        if mask_logits.shape[0] == 0:
            zero = pred_masks.sum() * 0.0
            return {"loss_proj": zero, "loss_pairwise": zero.clone()}
        box_masks = torch.cat([t["box_masks"][gt.to(t["box_masks"].device)] for t, (_, gt) in zip(targets, indices)])
        similarity = torch.cat([
            t["color_similarity"][None].expand(len(gt), -1, -1, -1) for t, (_, gt) in zip(targets, indices)
        ])
        loss_proj = compute_project_term(mask_logits.sigmoid(), box_masks).sum() / num_masks
        total, count = compute_pairwise_term(mask_logits, similarity, box_masks, self.color_thresh,
                                             self.kernel_size, self.dilation)
        factor = pairwise_warmup_factor(self.current_iter, self.warmup_iters, self.start_iter)
        return {"loss_proj": loss_proj, "loss_pairwise": factor * total / count.clamp_min(1.0)}
