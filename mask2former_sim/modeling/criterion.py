"""Set-prediction losses of Mask2Former with deep supervision over every prediction head.

For each head (the final one and the ``aux_outputs``), queries are matched to ground truths by the Hungarian
matcher and each loss named in ``losses`` is evaluated on the matched pairs. Loss families live in
``SetCriterion.loss_fns`` keyed by name (``"labels"``, ``"masks"``); a family returns a dict of terms
(``loss_ce``; ``loss_mask`` and ``loss_dice``). Auxiliary heads suffix their keys with ``_0`` … ``_{L-2}``.
The criterion returns UNWEIGHTED losses; the meta-architecture multiplies them by ``weight_dict`` and checks
that every emitted key has a weight.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import comm
from .losses.mask import calculate_uncertainty, dice_loss, get_uncertain_point_coords_with_randomness
from .losses.mask import point_sample, sigmoid_ce_loss
from .matcher import HungarianMatcher

__all__ = ["SetCriterion", "expand_weight_dict", "mask_weight_dict", "box_base_weights", "build_criterion"]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]
Targets = List[Dict[str, torch.Tensor]]
LossFn = Callable[[Dict[str, torch.Tensor], Targets, Indices, float], Dict[str, torch.Tensor]]


def expand_weight_dict(base: Dict[str, float], num_aux_heads: int) -> Dict[str, float]:
    """Copy every weight for the auxiliary heads: ``{k: w}`` → ``{k: w, k_0: w, …, k_{n-1}: w}``."""
    weights = dict(base)
    for i in range(num_aux_heads):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    return weights


def mask_weight_dict(
    class_weight: float, mask_weight: float, dice_weight: float, num_aux_heads: int
) -> Dict[str, float]:
    """Mask2Former's weights (``loss_ce``, ``loss_mask``, ``loss_dice``) for the final and auxiliary heads."""
    base = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    return expand_weight_dict(base, num_aux_heads)


def _src_permutation_idx(indices: Indices) -> Tuple[torch.Tensor, torch.Tensor]:
    """(batch_idx, query_idx) of all matched predictions, concatenated over images."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx, src_idx


def prediction_heads(outputs: Dict[str, torch.Tensor]) -> List[Tuple[str, Dict[str, torch.Tensor]]]:
    """(key suffix, outputs) of every prediction head: ``("", final)``, then ``("_0", aux 0)``, …

    A head holds ``pred_logits`` and ``pred_masks``; the network's ``mask_features`` belong to no head.
    """
    final = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "mask_features")}
    return [("", final)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]


class SetCriterion(nn.Module):
    """Hungarian-matched classification and mask losses, summed per head.

    Args:
        num_classes: K (the "no object" class is index K).
        matcher: maps (one head's outputs, targets) to per-image (query_idx, gt_idx).
        weight_dict: weight of every loss key the criterion can emit (the meta-arch applies it).
        eos_coef: CE weight of the "no object" class.
        losses: loss families to compute, names of ``loss_fns`` (e.g. ``["labels", "masks"]``).
        num_points: P points per mask (importance sampled).
        oversample_ratio: PointRend oversampling k.
        importance_sample_ratio: PointRend fraction β of uncertain points.
        generator: optional RNG on the outputs' device for reproducible point sampling (see also
            :meth:`sample_points`, which a test may replace to make sampling independent of the batch layout).
        extra_loss_fns: more loss families ``name -> fn(outputs, targets, indices, num_masks) -> dict`` (the box
            and SIM modes add theirs here); objects with ``set_iter`` receive the training iteration.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Sequence[str],
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        generator: Optional[torch.Generator] = None,
        extra_loss_fns: Optional[Dict[str, LossFn]] = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.generator = generator
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)  # from the config, not checkpoints
        self.loss_fns: Dict[str, LossFn] = {"labels": self.loss_labels, "masks": self.loss_masks}
        self.loss_fns.update(extra_loss_fns or {})
        unknown = [name for name in losses if name not in self.loss_fns]
        if unknown:
            raise KeyError(f"unknown loss families {unknown}; SetCriterion knows {sorted(self.loss_fns)}")
        self.losses = list(losses)

    @classmethod
    def from_config(
        cls,
        cfg,
        *,
        base_weights: Optional[Dict[str, float]] = None,
        losses: Sequence[str] = ("labels", "masks"),
        extra_loss_fns: Optional[Dict[str, LossFn]] = None,
    ) -> "SetCriterion":
        """The criterion of ``cfg``; by default Mask2Former's (labels + masks with CLASS/MASK/DICE weights).

        ``base_weights`` (weights of the final head, copied to every auxiliary head), ``losses`` and
        ``extra_loss_fns`` let the box and SIM modes reuse everything else.
        """
        mf = cfg.MODEL.MASK_FORMER
        num_aux = mf.DEC_LAYERS - 1 if mf.DEEP_SUPERVISION else 0
        if base_weights is None:
            base_weights = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        return cls(
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            matcher=HungarianMatcher.from_config(cfg),
            weight_dict=expand_weight_dict(base_weights, num_aux),
            eos_coef=mf.NO_OBJECT_WEIGHT,
            losses=list(losses),
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
            extra_loss_fns=extra_loss_fns,
        )

    def loss_labels(
        self, outputs: Dict[str, torch.Tensor], targets: Targets, indices: Indices, num_masks: float
    ) -> Dict[str, torch.Tensor]:
        """Cross-entropy over K+1 classes for every query; unmatched queries target "no object" (weight eos_coef).

        L_ce = Σ_q w_{c_q}·(−log softmax(z_q)[c_q]) / Σ_q w_{c_q}, with the normaliser Σ w averaged over
        processes, so that DDP's gradient average over P processes equals one process with the whole batch
        (in one process this is exactly Mask2Former's weighted-mean cross-entropy).
        """
        src_logits = outputs["pred_logits"].float()
        batch_idx, src_idx = _src_permutation_idx(indices)
        target_classes = torch.full(src_logits.shape[:2], self.num_classes, dtype=torch.int64, device=src_logits.device)
        matched = torch.cat([t["labels"][gt] for t, (_, gt) in zip(targets, indices)]).to(src_logits.device)
        target_classes[batch_idx.to(src_logits.device), src_idx.to(src_logits.device)] = matched
        weight = self.empty_weight.to(src_logits)
        per_query = F.cross_entropy(src_logits.transpose(1, 2), target_classes, weight, reduction="none")
        normaliser = comm.all_reduce_sum(weight[target_classes].sum().detach()) / comm.get_world_size()
        return {"loss_ce": per_query.sum() / normaliser.clamp_min(torch.finfo(normaliser.dtype).tiny)}

    def loss_masks(
        self, outputs: Dict[str, torch.Tensor], targets: Targets, indices: Indices, num_masks: float
    ) -> Dict[str, torch.Tensor]:
        """Point-sampled BCE and dice between matched stride-4 mask logits and GT masks (padded input resolution).

        Points are importance sampled on the predictions (no gradient); both maps are read at the same relative
        points, so their resolutions may differ.
        """
        pred_masks = outputs["pred_masks"]
        batch_idx, src_idx = _src_permutation_idx(indices)
        src_masks = pred_masks[batch_idx.to(pred_masks.device), src_idx.to(pred_masks.device)].float()
        if src_masks.shape[0] == 0:
            zero = pred_masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        target_masks = torch.cat([t["masks"][gt.to(t["masks"].device)] for t, (_, gt) in zip(targets, indices)])
        src_masks = src_masks[:, None]
        target_masks = target_masks.to(src_masks)[:, None]
        with torch.no_grad():
            point_coords = self.sample_points(src_masks)
            point_labels = point_sample(target_masks, point_coords).squeeze(1)
        point_logits = point_sample(src_masks, point_coords).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

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

    def set_iter(self, iteration: int) -> None:
        """Pass the training iteration to the matcher and to loss families that warm up."""
        if hasattr(self.matcher, "set_iter"):
            self.matcher.set_iter(iteration)
        for fn in self.loss_fns.values():
            if hasattr(fn, "set_iter"):
                fn.set_iter(iteration)

    def get_num_masks(self, targets: List[Dict[str, torch.Tensor]], device: torch.device) -> float:
        """Number of GT instances in the batch, averaged over processes, at least 1."""
        num_masks = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        num_masks = comm.all_reduce_sum(num_masks) / comm.get_world_size()
        return max(float(num_masks.item()), 1.0)

    def heads(self, outputs: Dict[str, torch.Tensor]) -> List[Tuple[str, Dict[str, torch.Tensor]]]:
        """(key suffix, outputs) of every prediction head; see :func:`prediction_heads`."""
        return prediction_heads(outputs)

    def match(self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]) -> List[Indices]:
        """Hungarian matching of every head, in the order of :meth:`heads`."""
        return [self.matcher(head, targets) for _, head in self.heads(outputs)]

    def forward(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: List[Dict[str, torch.Tensor]],
        indices_per_head: Optional[List[Indices]] = None,
    ) -> Dict[str, torch.Tensor]:
        """Unweighted losses of every head.

        Args:
            outputs: ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, h, w), ``aux_outputs`` (list of the same).
            targets: B dicts ``labels`` (N,), ``masks`` (N, Hp, Wp) (mask families), ``boxes``, ``padding_mask``.
            indices_per_head: matches from :meth:`match` to reuse; computed here when None.

        Returns:
            ``{loss_ce, loss_mask, loss_dice, loss_ce_0, …}`` scalars.
        """
        heads = self.heads(outputs)
        if indices_per_head is None:
            indices_per_head = self.match(outputs, targets)
        if len(indices_per_head) != len(heads):
            raise ValueError(f"got matches for {len(indices_per_head)} heads, the outputs have {len(heads)}")
        num_masks = self.get_num_masks(targets, outputs["pred_logits"].device)
        losses: Dict[str, torch.Tensor] = {}
        for (suffix, head), indices in zip(heads, indices_per_head):
            for name in self.losses:
                terms = self.loss_fns[name](head, targets, indices, num_masks)
                losses.update({k + suffix: v for k, v in terms.items()})
        return losses

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, losses={self.losses}, eos_coef={self.eos_coef}, "
                f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
                f"importance_sample_ratio={self.importance_sample_ratio}")


def box_base_weights(cfg) -> Dict[str, float]:
    """BoxInst-M2F's weights of one head: ``loss_ce`` (CLASS_WEIGHT), ``loss_proj``, ``loss_pairwise``."""
    bi = cfg.MODEL.BOXINST
    return {"loss_ce": cfg.MODEL.MASK_FORMER.CLASS_WEIGHT, "loss_proj": bi.PROJECTION_WEIGHT,
            "loss_pairwise": bi.PAIRWISE_WEIGHT}


def build_criterion(cfg) -> SetCriterion:
    """The criterion of ``cfg.MODEL.MASK_FORMER.SUPERVISION``.

    "mask": labels + point-sampled masks; "box": labels + BoxInst projection and pairwise terms; "sim": the box
    families plus SIM's pseudo-mask and paste losses (:func:`.sim.criterion.build_sim_criterion`).
    """
    mode = cfg.MODEL.MASK_FORMER.SUPERVISION
    if mode == "mask":
        return SetCriterion.from_config(cfg)
    if mode == "sim":
        from .sim.criterion import build_sim_criterion

        return build_sim_criterion(cfg)
    if mode != "box":
        raise KeyError(f"MODEL.MASK_FORMER.SUPERVISION = {mode!r}: build_criterion knows 'mask', 'box' and 'sim'")
    from .box_supervision import BoxInstLoss

    return SetCriterion.from_config(
        cfg,
        base_weights=box_base_weights(cfg),
        losses=["labels", "boxinst"],
        extra_loss_fns={"boxinst": BoxInstLoss.from_config(cfg)},
    )
