"""SIM's mask losses (Li et al., CVPR 2023, Eq. 8-10) and the targets they read.

``L = L_box + λ1·L_pseudo + λ2·L_paste`` per prediction head (Eq. 10; the weights in :mod:`..supervision`), with
``L_box`` the class CE and BoxInst's terms on every instance, pasted ones included (the official code: a pasted
instance's box is the tight box of its pasted pixels), and

- ``loss_pseudo`` (Eq. 8): the original instances against their pseudo masks M̂ with the weight map W (0 on the
  ignored band ``τ_low < M̂_prob < τ_high`` and on padding), divided by the number of original instances (N_pos);
- ``loss_paste`` (Eq. 9): the pasted instances against their bank masks M̂', divided by the number of pasted ones.

``ℓ_mask`` is BCE plus dice on LOGITS (:func:`~.mask.sigmoid_ce_loss`, :func:`~.mask.dice_loss` with weights); the
official code applied a focal loss to probabilities as if they were logits, which is not reproduced. Every family
emits its key at every iteration (zero when it has nothing to supervise), so all processes log the same keys.

The targets: :func:`paste_targets` (after the box targets: ``pasted``, ``paste_masks``, ``paste_weights`` and the
originals' box masks minus the pasted pixels) and :func:`with_pseudo_masks` (after the matching).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ..criterion import LossContext, batch_instances, matched_logits, matched_rows
from ..image_list import place
from ..targets import Indices, Targets
from .mask import dice_loss, sigmoid_ce_loss

__all__ = [
    "weighted_mask_loss",
    "select_pasted",
    "MaskTargetLoss",
    "pseudo_mask_loss_family",
    "paste_loss_family",
    "paste_targets",
    "with_pseudo_masks",
]


def weighted_mask_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, num_masks: float
) -> torch.Tensor:
    """SIM's ``ℓ_mask`` = weighted BCE + weighted dice, summed over instances and divided by ``num_masks``.

    Eq. 8: ``L_pseudo = 1/N_pos Σ_k ℓ_mask(M_pred^k, M̂_k, W_k)``; Eq. 9: ``L_paste = Σ_k 1_paste·ℓ_mask(M_pred^k,
    M̂'^k)`` (W = 1 on real image pixels).

    Args:
        logits: (M, h, w) or (M, P) student mask logits of the matched queries.
        labels: targets in {0, 1}, same shape.
        weights: W (0 = ignored), same shape.
        num_masks: normaliser (number of instances).

    Returns:
        Scalar loss.
    """
    return sigmoid_ce_loss(logits, labels, num_masks, weights) + dice_loss(logits, labels, num_masks, weights)


def select_pasted(indices: Indices, targets: Targets, pasted: bool) -> Indices:
    """The matches whose GT is (``pasted=True``) or is not (``False``) a pasted instance."""
    out = []
    for (src, tgt), t in zip(indices, targets):
        flags = t.get("pasted")
        if flags is None:
            keep = torch.full_like(tgt, not pasted, dtype=torch.bool)
        else:
            keep = flags.to(tgt.device)[tgt] == pasted
        out.append((src[keep], tgt[keep]))
    return out


class MaskTargetLoss:
    """``ℓ_mask`` (weighted BCE + dice) of the matched masks against per-instance target rows.

    Args:
        key: the emitted loss key.
        labels, weights: the target keys of the (N, h, w) labels and weights.
        pasted: apply to the pasted instances (True) or to the original ones (False).
    """

    def __init__(self, *, key: str, labels: str, weights: str, pasted: bool) -> None:
        self.key = key
        self.labels = labels
        self.weights = weights
        self.pasted = pasted

    def num_instances(self, targets: Targets) -> int:
        """Its own count, not the batch's: the pasted (``pasted=True``) or the original instances (Eq. 8 divides
        by the positives, Eq. 9 sums over the pasted instances); an image without ``pasted`` has originals only."""
        flags = [t.get("pasted") for t in targets]
        pasted = sum(int(f.sum()) for f in flags if f is not None)
        return pasted if self.pasted else batch_instances(targets) - pasted

    def __call__(
        self, outputs: Dict[str, torch.Tensor], targets: Targets, indices: Indices, context: LossContext
    ) -> Dict[str, torch.Tensor]:
        zero = outputs["pred_masks"].sum() * 0.0
        if not all(self.labels in t for t in targets):
            return {self.key: zero}
        indices = select_pasted(indices, targets, self.pasted)
        if sum(len(src) for src, _ in indices) == 0:
            return {self.key: zero}
        logits = matched_logits(outputs["pred_masks"], indices)
        labels = matched_rows(targets, indices, self.labels)
        weights = matched_rows(targets, indices, self.weights)
        return {self.key: weighted_mask_loss(logits, labels, weights, context.num_masks)}

    def __repr__(self) -> str:
        return f"MaskTargetLoss({self.key}: {self.labels} x {self.weights}, pasted={self.pasted})"


def pseudo_mask_loss_family() -> MaskTargetLoss:
    """``loss_pseudo`` (Eq. 8): the original instances against their pseudo masks (from ``START_ITER``)."""
    return MaskTargetLoss(key="loss_pseudo", labels="pseudo_labels", weights="pseudo_weights", pasted=False)


def paste_loss_family() -> MaskTargetLoss:
    """``loss_paste`` (Eq. 9): the pasted instances against their bank masks."""
    return MaskTargetLoss(key="loss_paste", labels="paste_masks", weights="paste_weights", pasted=True)


@torch.no_grad()
def paste_targets(targets: Targets, batched_inputs: Sequence[Dict[str, Any]], stride: int) -> Targets:
    """``targets`` (with ``box_masks``) plus the copy-paste targets.

    ``pasted`` (N,) bool flags the instances pasted onto the image (the last ones; the input's
    ``instances["pasted"]``); their ``paste_masks`` (N, h, w) are their pasted pixels (``instances["paste_masks"]``)
    sampled at the mask stride (offset ``stride // 2``, where the box masks are sampled) and ``paste_weights``
    (N, h, w) is 1 on real image pixels; the other instances lose the pasted pixels
    (``instances["paste_occlusion"]``) from their ``box_masks`` (a box minus its occluder).
    """
    s, off = stride, stride // 2
    out = []
    for target, x in zip(targets, batched_inputs):
        box_masks = target["box_masks"]
        n, (hp, wp) = box_masks.shape[0], target["padding_mask"].shape
        device = box_masks.device
        inst = x["instances"]
        pasted = inst.get("pasted", torch.zeros(n, dtype=torch.bool)).to(device)
        paste_masks = box_masks.new_zeros(box_masks.shape)
        if bool(pasted.any()):
            masks = place(inst["paste_masks"].to(device), hp, wp, False)[:, off::s, off::s]
            paste_masks[pasted] = masks.to(paste_masks)
            occlusion = place(inst["paste_occlusion"].to(device), hp, wp, False)[off::s, off::s]
            box_masks = box_masks.clone()
            box_masks[~pasted] = box_masks[~pasted] * (~occlusion).to(box_masks)
        valid = (~target["padding_mask"][off::s, off::s]).float()
        out.append(
            {
                **target,
                "box_masks": box_masks,
                "pasted": pasted,
                "paste_masks": paste_masks,
                "paste_weights": valid[None].expand(n, -1, -1),
            }
        )
    return out


def with_pseudo_masks(targets: Targets, pseudo: Optional[Sequence[Tuple[torch.Tensor, torch.Tensor]]]) -> Targets:
    """``targets`` with ``pseudo_labels`` and ``pseudo_weights`` (N, h, w) per image (Eq. 8's M̂ and W), or unchanged
    when ``pseudo`` is None (before SIM starts)."""
    if pseudo is None:
        return list(targets)
    return [{**t, "pseudo_labels": labels, "pseudo_weights": weights} for t, (labels, weights) in zip(targets, pseudo)]
