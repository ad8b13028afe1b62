"""SIM prototypes (Eq. 1-5): Sinkhorn-Knopp marginals and clustering, the prototype update by hand, M_S."""

import math

import torch
import torch.nn.functional as F

from mask2former_sim.modeling.sim.prototypes import (
    PrototypeBank,
    ema_update_prototypes,
    hard_assignment,
    prototype_centroids,
    semantic_map,
    sinkhorn_knopp,
)


def test_sinkhorn_marginals_match_eq2_after_enough_iterations():
    g = torch.Generator().manual_seed(0)
    scores = F.normalize(torch.randn(50, 8, generator=g), dim=1) @ F.normalize(torch.randn(5, 8, generator=g), dim=1).T
    plan = sinkhorn_knopp(scores, n_iters=200, epsilon=0.05)
    assert plan.shape == (50, 5) and plan.dtype == torch.float32
    torch.testing.assert_close(plan.sum(0), torch.full((5,), 1 / 5), rtol=0, atol=1e-4)  # r = 1/L
    torch.testing.assert_close(plan.sum(1), torch.full((50,), 1 / 50), rtol=0, atol=1e-4)  # h = 1/N
    assert torch.all(plan >= 0)


def test_sinkhorn_equals_the_scaled_kernel_of_eq3():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.4]])
    plan = sinkhorn_knopp(scores, n_iters=3, epsilon=0.5)
    kernel = torch.exp(scores / 0.5)
    # Q* = diag(u) K diag(v): the ratio plan / K has rank one
    ratio = plan / kernel
    u, v = ratio[:, :1], ratio[:1, :] / ratio[0, 0]
    torch.testing.assert_close(ratio, u * v)
    # hand iteration
    q = kernel / kernel.sum()
    for _ in range(3):
        q = q / q.sum(0, keepdim=True) / 2
        q = q / q.sum(1, keepdim=True) / 3
    torch.testing.assert_close(plan, q)


def test_hard_assignment_recovers_well_separated_clusters():
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(4, 16)  # 4 orthogonal directions
    labels = torch.arange(4).repeat_interleave(30)
    feats = F.normalize(centres[labels] + 0.05 * torch.randn(120, 16, generator=g), dim=1)
    perm = torch.randperm(120, generator=g)
    feats, labels = feats[perm], labels[perm]
    protos = F.normalize(centres + 0.3 * torch.randn(4, 16, generator=g), dim=1)
    assign = hard_assignment(sinkhorn_knopp(feats @ protos.T, n_iters=3, epsilon=0.05))
    assert torch.equal(assign, labels)


def test_equal_partition_spreads_one_cluster_over_all_prototypes():
    noise = torch.randn(40, 4, generator=torch.Generator().manual_seed(2))
    feats = F.normalize(torch.ones(40, 4) + 0.01 * noise, dim=1)
    protos = F.normalize(torch.randn(4, 4, generator=torch.Generator().manual_seed(3)), dim=1)
    assign = hard_assignment(sinkhorn_knopp(feats @ protos.T, n_iters=50, epsilon=0.05))
    assert torch.bincount(assign, minlength=4).min() > 0  # no prototype collapses


def test_prototype_update_equals_hand_computation_of_eq4_eq5():
    protos = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    feats = F.normalize(torch.tensor([[1.0, 0.1, 0.0], [1.0, -0.1, 0.0], [0.1, 1.0, 0.0]]), dim=1)
    assign = torch.tensor([0, 0, 1])
    centroids, counts = prototype_centroids(feats, assign, 3)
    assert counts.tolist() == [2.0, 1.0, 0.0]
    c0 = feats[0] + feats[1]
    c0 = c0 / c0.norm()
    torch.testing.assert_close(centroids[0], c0)
    torch.testing.assert_close(centroids[1], feats[2])
    new = ema_update_prototypes(protos, centroids, counts, momentum=0.9)
    expected0 = 0.9 * protos[0] + 0.1 * c0
    torch.testing.assert_close(new[0], expected0 / expected0.norm())
    expected1 = 0.9 * protos[1] + 0.1 * feats[2]
    torch.testing.assert_close(new[1], expected1 / expected1.norm())
    torch.testing.assert_close(new[2], protos[2])  # no pixels: unchanged


def test_bank_update_matches_hand_steps_keeps_unit_norm_and_leaves_absent_classes():
    torch.manual_seed(0)
    bank = PrototypeBank(num_classes=3, num_prototypes=2, dim=4, momentum=0.5, sinkhorn_iters=3, sinkhorn_epsilon=0.05)
    before = bank.prototypes.clone()
    torch.testing.assert_close(before.norm(dim=-1), torch.ones(3, 2))
    feats_a = F.normalize(torch.randn(6, 4), dim=1)
    feats_b = F.normalize(torch.randn(5, 4), dim=1)
    bank.update([(1, feats_a), (1, feats_b), (2, feats_a[:0])])
    # hand: two sequential image updates of class 1
    p = before[1].clone()
    for feats in (feats_a, feats_b):
        assign = sinkhorn_knopp(feats @ p.T, 3, 0.05).argmax(1)
        for k in range(2):
            sel = feats[assign == k]
            if len(sel):
                c = sel.mean(0)
                c = c / c.norm()
                q = 0.5 * p[k] + 0.5 * c
                p[k] = q / q.norm()
    torch.testing.assert_close(bank.prototypes[1], p)
    torch.testing.assert_close(bank.prototypes.norm(dim=-1), torch.ones(3, 2))
    assert torch.equal(bank.prototypes[0], before[0]) and torch.equal(bank.prototypes[2], before[2])
    assert "prototypes" in bank.state_dict()


def test_semantic_map_is_sigmoid_of_max_cosine_over_temperature():
    feats = F.normalize(torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(4)), dim=0)
    protos = F.normalize(torch.randn(2, 4, generator=torch.Generator().manual_seed(5)), dim=1)
    ms = semantic_map(feats, protos, temperature=0.5)
    for y in range(3):
        for x in range(5):
            best = max(float(feats[:, y, x] @ protos[k]) for k in range(2))
            assert math.isclose(float(ms[y, x]), 1 / (1 + math.exp(-best / 0.5)), rel_tol=1e-5)
    # batched over instances' classes: (K, L, D) -> (K, h, w)
    assert semantic_map(feats, protos[None].expand(3, -1, -1), 1.0).shape == (3, 3, 5)
