"""The loss families SIM adds to :class:`~..criterion.SetCriterion` and the "sim" criterion (SPEC §5-6, Eq. 10).

``L = L_box + λ1·L_pseudo + λ2·L_paste`` per prediction head, with ``L_box`` = class CE + BoxInst projection and
pairwise terms on every instance (pasted ones included, as the official code: a pasted instance's box is the
tight box of its pasted pixels), ``L_pseudo`` (Eq. 8) on the original (non-pasted) instances against the
pseudo masks, and ``L_paste`` (Eq. 9) on the pasted instances only against their bank pseudo masks. The families
read what :class:`~.supervisor.SIMSupervisor` adds to the targets: ``pasted`` (N,), ``pseudo_labels`` /
``pseudo_weights`` (N, h, w) (from ``START_ITER`` on), ``paste_masks`` (N, h, w) and ``valid_mask`` (h, w).
Every family emits its keys at every iteration (zero when it has nothing to supervise), so all processes log
the same keys.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from ..losses.sim import paste_loss, pseudo_mask_loss

__all__ = ["PseudoMaskLoss", "PasteLoss", "build_sim_criterion"]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def _select(indices: Indices, targets: Sequence[Dict[str, torch.Tensor]], pasted: bool) -> Indices:
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


def _matched(outputs: Dict[str, torch.Tensor], targets: Sequence[Dict[str, torch.Tensor]], indices: Indices,
             keys: Sequence[str]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Matched mask logits (M, h, w) and the matching rows of ``targets[key]`` for each key."""
    pred_masks = outputs["pred_masks"]
    logits = [pred_masks[b, src.to(pred_masks.device)] for b, (src, _) in enumerate(indices)]
    rows = [[t[key][tgt.to(t[key].device)] for t, (_, tgt) in zip(targets, indices)] for key in keys]
    return torch.cat(logits).float(), [torch.cat(r) for r in rows]


class PseudoMaskLoss:
    """``loss_pseudo`` (Eq. 8): weighted BCE + dice of the matched student masks vs the pseudo masks."""

    def __call__(self, outputs: Dict[str, torch.Tensor], targets: Sequence[Dict[str, torch.Tensor]],
                 indices: Indices, num_masks: float) -> Dict[str, torch.Tensor]:
        zero = outputs["pred_masks"].sum() * 0.0
        if not all("pseudo_labels" in t for t in targets):
            return {"loss_pseudo": zero}
        indices = _select(indices, targets, pasted=False)
        if sum(len(src) for src, _ in indices) == 0:
            return {"loss_pseudo": zero}
        logits, (labels, weights) = _matched(outputs, targets, indices, ("pseudo_labels", "pseudo_weights"))
        return {"loss_pseudo": pseudo_mask_loss(logits, labels, weights, num_masks)}


class PasteLoss:
    """``loss_paste`` (Eq. 9): BCE + dice of the students' masks matched to pasted instances vs their masks."""

    def __call__(self, outputs: Dict[str, torch.Tensor], targets: Sequence[Dict[str, torch.Tensor]],
                 indices: Indices, num_masks: float) -> Dict[str, torch.Tensor]:
        zero = outputs["pred_masks"].sum() * 0.0
        if not all("paste_masks" in t for t in targets):
            return {"loss_paste": zero}
        indices = _select(indices, targets, pasted=True)
        if sum(len(src) for src, _ in indices) == 0:
            return {"loss_paste": zero}
        logits, (masks,) = _matched(outputs, targets, indices, ("paste_masks",))
        valid = torch.cat([t["valid_mask"][None].expand(len(tgt), -1, -1) for t, (_, tgt) in zip(targets, indices)])
        return {"loss_paste": paste_loss(logits, masks, valid.float(), num_masks)}


def build_sim_criterion(cfg):
    """SetCriterion for ``SUPERVISION sim``: families labels + boxinst (all instances) + pseudo + paste (Eq. 10)."""
    from ..box_supervision import BoxInstLoss
    from ..criterion import SetCriterion, box_base_weights

    base_weights = {**box_base_weights(cfg), "loss_pseudo": cfg.MODEL.SIM.PSEUDO_WEIGHT,
                    "loss_paste": cfg.MODEL.SIM.PASTE_WEIGHT}
    return SetCriterion.from_config(
        cfg,
        base_weights=base_weights,
        losses=["labels", "boxinst", "pseudo", "paste"],
        extra_loss_fns={"boxinst": BoxInstLoss.from_config(cfg), "pseudo": PseudoMaskLoss(),
                        "paste": PasteLoss()},
    )
