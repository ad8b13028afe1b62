"""Set-prediction losses of Mask2Former with deep supervision over every prediction head.

For each head (the final one and the ``aux_outputs``) queries are matched to ground truths by the Hungarian
matcher, and every loss family of the supervision mode (:func:`~.supervision.build_supervision`) is evaluated
on the matched pairs. A family is a :class:`LossFamily`::

    family(head_outputs, targets, indices, context) -> {"loss_x": scalar, ...}
    family.num_instances(targets) -> int

with ``context`` a :class:`LossContext` (the family's instance count and the training iteration). Every family
declares its normaliser with ``num_instances``: all GT instances of the batch (:func:`batch_instances`, Mask2Former's
``num_masks``) or the instances it supervises (SIM's pseudo loss: the original instances, Eq. 8; its paste loss: the
pasted ones, Eq. 9); the counts of every family are all-reduced together, once per iteration. Auxiliary heads
suffix their keys with ``_0`` … ``_{L-2}``. The criterion returns UNWEIGHTED losses; the meta-architecture
multiplies them by ``weight_dict`` and checks that every emitted key has a weight.

:class:`ClassificationLoss` (``loss_ce``) is the family every mode shares; the mask families live with their
equations, one file each (:mod:`.losses.mask`, :mod:`.losses.boxinst`, :mod:`.losses.sim`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import comm
from .targets import Indices, Targets

__all__ = [
    "LossContext",
    "LossFamily",
    "batch_instances",
    "SetCriterion",
    "ClassificationLoss",
    "expand_weight_dict",
    "prediction_heads",
    "matched_logits",
    "matched_rows",
]


@dataclass(frozen=True)
class LossContext:
    """What every loss family of one iteration may need besides the matched pairs.

    Attributes:
        num_masks: the family's :meth:`LossFamily.num_instances` in the batch, averaged over processes, at least 1
            (Mask2Former's normaliser).
        iteration: the training iteration (warm-ups and schedules).
    """

    num_masks: float
    iteration: int


@runtime_checkable
class LossFamily(Protocol):
    """The loss terms of one prediction head's matched pairs, and the instances they are normalised by."""

    def num_instances(self, targets: Targets) -> int:
        """The family's normaliser on this process: :func:`batch_instances` for a family that supervises every GT,
        or the instances the family supervises (the criterion averages it over processes into
        :attr:`LossContext.num_masks`)."""
        ...

    def __call__(
        self, outputs: Dict[str, torch.Tensor], targets: Targets, indices: Indices, context: LossContext
    ) -> Dict[str, torch.Tensor]:
        """Unweighted ``{"loss_x": scalar}`` of one head: ``outputs`` holds its ``pred_logits`` (B, Q, K+1) and
        ``pred_masks`` (B, Q, h, w), ``indices`` its per-image ``(query_idx, gt_idx)``."""
        ...


def batch_instances(targets: Targets) -> int:
    """All GT instances of the batch on this process: the normaliser of a family that supervises every instance."""
    return sum(len(t["labels"]) for t in targets)


def expand_weight_dict(base: Dict[str, float], num_aux_heads: int) -> Dict[str, float]:
    """Copy every weight for the auxiliary heads: ``{k: w}`` → ``{k: w, k_0: w, …, k_{n-1}: w}``."""
    weights = dict(base)
    for i in range(num_aux_heads):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    return weights


def prediction_heads(outputs: Dict[str, torch.Tensor]) -> List[Tuple[str, Dict[str, torch.Tensor]]]:
    """(key suffix, outputs) of every prediction head: ``("", final)``, then ``("_0", aux 0)``, …

    A head holds ``pred_logits`` and ``pred_masks``; the network's ``mask_features`` belong to no head.
    """
    final = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "mask_features")}
    return [("", final)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]


def matched_logits(pred_masks: torch.Tensor, indices: Indices) -> torch.Tensor:
    """(M, h, w) fp32 mask logits of the matched queries of every image, in the order of ``indices``."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(pred_masks.device)
    src_idx = torch.cat([src for src, _ in indices]).to(pred_masks.device)
    return pred_masks[batch_idx, src_idx].float()


def matched_rows(targets: Targets, indices: Indices, key: str) -> torch.Tensor:
    """The rows of ``targets[b][key]`` of the matched GTs of every image, concatenated (the order of
    :func:`matched_logits`)."""
    return torch.cat([t[key][gt.to(t[key].device)] for t, (_, gt) in zip(targets, indices)])


class ClassificationLoss:
    """The ``"labels"`` family: cross-entropy over K+1 classes for every query.

    Unmatched queries target "no object" (index K, weight ``eos_coef``).
    ``L_ce = Σ_q w_{c_q}·(−log softmax(z_q)[c_q]) / Σ_q w_{c_q}``, with the normaliser ``Σ w`` averaged over
    processes, so that DDP's gradient average over P processes equals one process with the whole batch (in one
    process this is exactly Mask2Former's weighted-mean cross-entropy). It reads no instance count: its
    :meth:`num_instances` (all GTs) is declared for the protocol only.
    """

    def __init__(self, *, num_classes: int, eos_coef: float) -> None:
        self.num_classes = num_classes
        self.eos_coef = eos_coef
        self.empty_weight = torch.ones(num_classes + 1)
        self.empty_weight[-1] = eos_coef

    def num_instances(self, targets: Targets) -> int:
        """All GTs (unread: the cross-entropy normalises by its class weights)."""
        return batch_instances(targets)

    def __call__(
        self, outputs: Dict[str, torch.Tensor], targets: Targets, indices: Indices, context: LossContext
    ) -> Dict[str, torch.Tensor]:
        src_logits = outputs["pred_logits"].float()
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        target_classes = torch.full(src_logits.shape[:2], self.num_classes, dtype=torch.int64, device=src_logits.device)
        matched = torch.cat([t["labels"][gt] for t, (_, gt) in zip(targets, indices)]).to(src_logits.device)
        target_classes[batch_idx.to(src_logits.device), src_idx.to(src_logits.device)] = matched
        weight = self.empty_weight.to(src_logits)
        per_query = F.cross_entropy(src_logits.transpose(1, 2), target_classes, weight, reduction="none")
        normaliser = comm.all_reduce_sum(weight[target_classes].sum().detach()) / comm.get_world_size()
        return {"loss_ce": per_query.sum() / normaliser.clamp_min(torch.finfo(normaliser.dtype).tiny)}


class SetCriterion(nn.Module):
    """Hungarian-matched loss families, summed per head.

    Args:
        matcher: maps (one head's outputs, targets) to per-image (query_idx, gt_idx).
        families: ``(name, family)`` pairs evaluated in this order at every head (see the module docstring).
        weight_dict: weight of every loss key the families can emit (the meta-arch applies it).
    """

    def __init__(
        self, *, matcher: nn.Module, families: Sequence[Tuple[str, LossFamily]], weight_dict: Dict[str, float]
    ) -> None:
        super().__init__()
        names = [name for name, _ in families]
        if len(set(names)) != len(names):
            raise ValueError(f"loss family names must be unique, got {names}")
        for name, family in families:
            if not isinstance(family, LossFamily):
                raise TypeError(
                    f"loss family {name!r} must be callable and have num_instances(targets) (LossFamily), "
                    f"found {type(family).__name__}"
                )
        self.matcher = matcher
        self.families: List[Tuple[str, LossFamily]] = list(families)
        self.weight_dict = dict(weight_dict)

    @property
    def family_names(self) -> List[str]:
        return [name for name, _ in self.families]

    def family(self, name: str) -> LossFamily:
        """The loss family called ``name``."""
        for other, family in self.families:
            if other == name:
                return family
        raise KeyError(f"no loss family {name!r}; the criterion has {self.family_names}")

    def num_masks_per_family(self, targets: Targets, device: torch.device) -> List[float]:
        """Every family's normaliser: its :meth:`LossFamily.num_instances` in the batch, averaged over processes (one
        all-reduce), at least 1."""
        counts = [float(family.num_instances(targets)) for _, family in self.families]
        counts = comm.all_reduce_sum(torch.tensor(counts, device=device)) / comm.get_world_size()
        return counts.clamp_min(1.0).tolist()

    def match(self, outputs: Dict[str, torch.Tensor], targets: Targets) -> List[Indices]:
        """Hungarian matching of every head, in the order of :func:`prediction_heads`."""
        return [self.matcher(head, targets) for _, head in prediction_heads(outputs)]

    def forward(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: Targets,
        indices_per_head: Optional[List[Indices]] = None,
        iteration: int = 0,
    ) -> Dict[str, torch.Tensor]:
        """Unweighted losses of every head.

        Args:
            outputs: ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, h, w), ``aux_outputs`` (list of the same).
            targets: B dicts ``labels`` (N,) and what the families read (:mod:`.targets`).
            indices_per_head: matches from :meth:`match` to reuse; computed here when None.
            iteration: the training iteration, given to the families in the :class:`LossContext`.

        Returns:
            ``{loss_ce, …, loss_ce_0, …}`` scalars.
        """
        heads = prediction_heads(outputs)
        if indices_per_head is None:
            indices_per_head = self.match(outputs, targets)
        if len(indices_per_head) != len(heads):
            raise ValueError(f"got matches for {len(indices_per_head)} heads, the outputs have {len(heads)}")
        num_masks = self.num_masks_per_family(targets, outputs["pred_logits"].device)
        contexts = [LossContext(num_masks=n, iteration=int(iteration)) for n in num_masks]
        losses: Dict[str, torch.Tensor] = {}
        for (suffix, head), indices in zip(heads, indices_per_head):
            for (_, family), context in zip(self.families, contexts):
                terms = family(head, targets, indices, context)
                losses.update({k + suffix: v for k, v in terms.items()})
        return losses

    def extra_repr(self) -> str:
        return f"families={self.family_names}"
