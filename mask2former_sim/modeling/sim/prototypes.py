"""Class prototypes and the semantic map M_S (SIM Eq. 1-5).

Each class ``c`` has ``L`` prototypes ``p_l^c`` of dimension ``D`` (the teacher's ``mask_features``), unit norm
along ``D`` (the official code normalised along ``L`` by mistake). Every training iteration, for each image and
each GT class present in it, the pixels confidently belonging to that class are assigned to the class's
prototypes by the Sinkhorn-Knopp algorithm (equal-partition optimal transport, Eq. 2-3) and a hard argmax (the
indicator of Eq. 5; the official code used a Gumbel-softmax), each prototype's centroid is the normalised mean of
its pixels (Eq. 5), and prototypes that received pixels move towards it by an EMA (Eq. 4). After all images the
prototypes are averaged over processes and re-normalised.

The prototypes are a buffer of :class:`PrototypeBank`, so they are saved in and restored from checkpoints with the
model and never reach the optimizer.
"""

from __future__ import annotations

from typing import Iterable, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...utils import comm

__all__ = [
    "sinkhorn_knopp",
    "hard_assignment",
    "prototype_centroids",
    "ema_update_prototypes",
    "semantic_map",
    "PrototypeBank",
]


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, n_iters: int = 3, epsilon: float = 0.05) -> torch.Tensor:
    """Eq. 2-3: the entropic transport plan between N pixels and L prototypes, in fp32.

    ``Q* = diag(u)·exp(S / ε)·diag(v)`` rescaled alternately so that every prototype receives mass ``1/L``
    (Eq. 2's ``r``) and every pixel sends mass ``1/N`` (``h``); each iteration normalises the prototype sums,
    then the pixel sums, so the pixel marginal is exact and the prototype marginal converges.

    Args:
        scores: (N, L) similarities ``⟨z_i, p_l⟩`` (the transpose of Eq. 2's ``P_c^T Z``).
        n_iters: Sinkhorn iterations (SIM: 3).
        epsilon: entropy weight ε (SIM: 0.05).

    Returns:
        (N, L) plan with ``Q.sum(0) ≈ 1/L`` and ``Q.sum(1) = 1/N``.
    """
    logits = scores.float() / epsilon
    q = torch.exp(logits - logits.max())  # a constant factor does not change the normalised plan
    num_pixels, num_protos = q.shape
    q = q / q.sum()
    for _ in range(n_iters):
        q = q / q.sum(dim=0, keepdim=True) / num_protos
        q = q / q.sum(dim=1, keepdim=True) / num_pixels
    return q


def hard_assignment(plan: torch.Tensor) -> torch.Tensor:
    """Eq. 5's indicator ``1(Q_il = 1)``: the prototype of largest transport mass per pixel, (N, L) → (N,)."""
    return plan.argmax(dim=1)


def prototype_centroids(
    features: torch.Tensor, assignment: torch.Tensor, num_prototypes: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5: the normalised mean of the features assigned to each prototype.

    Args:
        features: (N, D) L2-normalised pixel features.
        assignment: (N,) prototype index of each pixel.
        num_prototypes: L.

    Returns:
        centroids (L, D) with unit norm (zero rows for prototypes without pixels) and counts (L,).
    """
    one_hot = F.one_hot(assignment, num_prototypes).to(features.dtype)  # (N, L)
    counts = one_hot.sum(0)
    sums = one_hot.T @ features
    means = sums / counts.clamp_min(1.0)[:, None]
    return F.normalize(means, dim=1), counts


def ema_update_prototypes(
    prototypes: torch.Tensor, centroids: torch.Tensor, counts: torch.Tensor, momentum: float
) -> torch.Tensor:
    """Eq. 4: ``p_l ← γ·p_l + (1 − γ)·p̄_l`` for prototypes with pixels (``counts > 0``), then unit norm along D.

    Args:
        prototypes: (L, D) current prototypes of one class.
        centroids: (L, D) this image's centroids.
        counts: (L,) pixels per prototype.
        momentum: γ (SIM: 0.999).

    Returns:
        (L, D) updated prototypes; rows without pixels are returned unchanged.
    """
    moved = F.normalize(momentum * prototypes + (1.0 - momentum) * centroids, dim=1)
    return torch.where((counts > 0)[:, None], moved, prototypes)


def semantic_map(features: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 1: ``M_S = σ(max_l ⟨z_i, p_l⟩ / τ)``.

    Args:
        features: (D, h, w) L2-normalised (along D) teacher mask features.
        prototypes: (..., L, D) unit-norm prototypes (e.g. (K, L, D) for the classes of K instances).

    Returns:
        (..., h, w) probabilities.
    """
    similarity = torch.einsum("...ld,dhw->...lhw", prototypes.float(), features.float())
    return torch.sigmoid(similarity.amax(dim=-3) / temperature)


class PrototypeBank(nn.Module):
    """``prototypes`` buffer (C, L, D), unit norm along D, updated by :meth:`update`.

    Args:
        num_classes: C.
        num_prototypes: L (SIM: 10).
        dim: D (``MODEL.SEM_SEG_HEAD.MASK_DIM``).
        momentum: γ of Eq. 4 (SIM: 0.999).
        sinkhorn_iters, sinkhorn_epsilon: Sinkhorn-Knopp settings (SIM: 3, 0.05).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        num_prototypes: int,
        dim: int,
        momentum: float,
        sinkhorn_iters: int = 3,
        sinkhorn_epsilon: float = 0.05,
    ) -> None:
        super().__init__()
        self.num_prototypes = num_prototypes
        self.momentum = momentum
        self.sinkhorn_iters = sinkhorn_iters
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.register_buffer("prototypes", F.normalize(torch.randn(num_classes, num_prototypes, dim), dim=-1))

    @classmethod
    def from_config(cls, cfg) -> "PrototypeBank":
        sim = cfg.MODEL.SIM
        return cls(
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            num_prototypes=sim.NUM_PROTOTYPES,
            dim=cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            momentum=sim.PROTO_MOMENTUM,
            sinkhorn_iters=sim.SINKHORN_ITERS,
            sinkhorn_epsilon=sim.SINKHORN_EPSILON,
        )

    @torch.no_grad()
    def update(self, pixel_sets: Iterable[Tuple[int, torch.Tensor]]) -> None:
        """Eq. 2-5 for each (class, features) in order, then the mean over processes (re-normalised).

        Args:
            pixel_sets: ``(c, Z_c)`` with Z_c (N_c, D) L2-normalised features of one image's pixels of class c;
                sets with no pixel are skipped.
        """
        protos = self.prototypes.float().clone()
        for c, feats in pixel_sets:
            if feats.shape[0] == 0:
                continue
            feats = feats.float()
            plan = sinkhorn_knopp(feats @ protos[c].T, self.sinkhorn_iters, self.sinkhorn_epsilon)
            centroids, counts = prototype_centroids(feats, hard_assignment(plan), self.num_prototypes)
            protos[c] = ema_update_prototypes(protos[c], centroids, counts, self.momentum)
        if comm.get_world_size() > 1:
            protos = F.normalize(comm.all_reduce_mean(protos), dim=-1)
        self.prototypes.copy_(protos)

    def extra_repr(self) -> str:
        classes, num, dim = self.prototypes.shape
        return f"classes={classes}, prototypes={num}, dim={dim}, momentum={self.momentum}"
