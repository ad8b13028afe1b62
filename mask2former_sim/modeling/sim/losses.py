"""The loss families SIM adds to BoxInst-M2F (SPEC §5-6, Eq. 8-10): ``loss_pseudo`` and ``loss_paste``.

``L = L_box + λ1·L_pseudo + λ2·L_paste`` per prediction head (:func:`~..supervision.build_supervision`), with
``L_box`` = class CE + BoxInst projection and pairwise terms on every instance (pasted ones included, as the
official code: a pasted instance's box is the tight box of its pasted pixels), ``L_pseudo`` (Eq. 8) on the
original instances against their pseudo masks, ``L_paste`` (Eq. 9) on the pasted instances only against their
bank masks. Both are :class:`MaskTargetLoss` on different target rows (:mod:`..targets`). Every family emits
its key at every iteration (zero when it has nothing to supervise), so all processes log the same keys.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

from ..criterion import Indices, LossContext, Targets, matched_logits, matched_rows
from ..losses.sim import weighted_mask_loss

__all__ = ["select_pasted", "MaskTargetLoss", "pseudo_mask_loss_family", "paste_loss_family"]


def select_pasted(indices: Indices, targets: Sequence[Dict[str, torch.Tensor]], pasted: bool) -> Indices:
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
        """The normaliser's count: the batch's pasted (``pasted=True``) or original instances (Eq. 8 divides
        by the positives, Eq. 9 sums over the pasted instances)."""
        flags = [t.get("pasted") for t in targets]
        pasted = sum(int(f.sum()) for f in flags if f is not None)
        return pasted if self.pasted else sum(len(t["labels"]) for t in targets) - pasted

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
