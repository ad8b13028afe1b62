"""Hungarian matcher: optimal against brute force, robust to non-finite costs, empty and rectangular cases."""

import itertools
import logging

import numpy as np
import pytest
import torch

from mask2former_sim.modeling.losses.mask import MaskCost, batch_dice_cost, batch_sigmoid_ce_cost
from mask2former_sim.modeling.matcher import HungarianMatcher, sanitize_cost


class FixedCost:
    """Returns a given (Q, N) matrix per image, ignoring the predictions."""

    def __init__(self, matrices):
        self.matrices = matrices
        self.calls = 0

    def __call__(self, outputs_b, target_b):
        matrix = self.matrices[self.calls]
        self.calls += 1
        return matrix


def brute_force_min_cost(cost: np.ndarray) -> float:
    """Minimum total cost over all injective assignments of min(Q, N) pairs."""
    num_q, num_n = cost.shape
    if min(num_q, num_n) == 0:
        return 0.0
    if num_q >= num_n:
        return min(sum(cost[q, n] for n, q in enumerate(perm)) for perm in itertools.permutations(range(num_q), num_n))
    return min(sum(cost[q, n] for q, n in enumerate(perm)) for perm in itertools.permutations(range(num_n), num_q))


def fake_outputs(batch: int, num_queries: int, num_classes: int = 3, size: int = 8):
    return {
        "pred_logits": torch.randn(batch, num_queries, num_classes + 1),
        "pred_masks": torch.randn(batch, num_queries, size, size),
    }


def fake_target(num_targets: int, num_classes: int = 3, size: int = 16):
    return {
        "labels": torch.randint(0, num_classes, (num_targets,)),
        "masks": torch.rand(num_targets, size, size) > 0.5,
    }


def check_valid(rows: torch.Tensor, cols: torch.Tensor, num_q: int, num_n: int) -> None:
    assert rows.dtype == torch.int64 and cols.dtype == torch.int64
    assert len(rows) == len(cols) == min(num_q, num_n)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert all(0 <= r < num_q for r in rows.tolist()) and all(0 <= c < num_n for c in cols.tolist())


@pytest.mark.parametrize("shape", [(5, 3), (4, 4), (3, 5), (6, 1), (1, 4), (5, 0), (2, 6)])
def test_assignment_is_optimal_against_brute_force(shape):
    rng = np.random.default_rng(sum(shape))
    num_q, num_n = shape
    matrices = [torch.as_tensor(rng.normal(size=(num_q, num_n)), dtype=torch.float32) for _ in range(3)]
    matcher = HungarianMatcher(cost=FixedCost(matrices))
    outputs = fake_outputs(3, num_q)
    targets = [fake_target(num_n) for _ in range(3)]
    indices = matcher(outputs, targets)
    assert len(indices) == 3
    for (rows, cols), matrix in zip(indices, matrices):
        check_valid(rows, cols, num_q, num_n)
        total = float(matrix[rows, cols].double().sum())
        assert total == pytest.approx(brute_force_min_cost(matrix.double().numpy()), abs=1e-5)


def test_mask_cost_assignment_optimal_and_matches_formula():
    torch.manual_seed(0)
    num_q, num_n, num_points = 5, 3, 64
    outputs = fake_outputs(1, num_q)
    target = fake_target(num_n)
    cost = MaskCost(
        cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points, generator=torch.Generator().manual_seed(7)
    )
    matcher = HungarianMatcher(cost=cost)
    ((rows, cols),) = matcher(outputs, [target])
    check_valid(rows, cols, num_q, num_n)

    # the same points again (same seed), then every term by hand with a loop-based bilinear sampler
    coords = torch.rand(1, num_points, 2, generator=torch.Generator().manual_seed(7))
    outputs_b = {k: v[0] for k, v in outputs.items()}
    recomputed = MaskCost(
        cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points, generator=torch.Generator().manual_seed(7)
    )(outputs_b, target)

    def sample(maps, pts):
        """Bilinear interpolation with align_corners=False and zero padding, written as a loop."""
        n, h, w = maps.shape
        out = torch.zeros(n, pts.shape[0])
        for p, (x, y) in enumerate(pts.tolist()):
            px, py = x * w - 0.5, y * h - 0.5
            x0, y0 = int(np.floor(px)), int(np.floor(py))
            for dx, dy in itertools.product((0, 1), (0, 1)):
                xi, yi = x0 + dx, y0 + dy
                wgt = (1 - abs(px - xi)) * (1 - abs(py - yi))
                if 0 <= xi < w and 0 <= yi < h:
                    out[:, p] += wgt * maps[:, yi, xi]
        return out

    out_pts = sample(outputs_b["pred_masks"], coords[0])
    tgt_pts = sample(target["masks"].float(), coords[0])
    prob = outputs_b["pred_logits"].softmax(-1)
    expected = torch.zeros(num_q, num_n)
    for q in range(num_q):
        for n in range(num_n):
            x, t = out_pts[q], tgt_pts[n]
            bce = -(t * torch.nn.functional.logsigmoid(x) + (1 - t) * torch.nn.functional.logsigmoid(-x)).mean()
            p = x.sigmoid()
            dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
            expected[q, n] = -2.0 * prob[q, target["labels"][n]] + 5.0 * bce + 5.0 * dice
    torch.testing.assert_close(recomputed, expected, atol=1e-4, rtol=1e-4)
    total = float(expected[rows, cols].sum())
    assert total == pytest.approx(brute_force_min_cost(expected.double().numpy()), abs=1e-4)


def test_batch_costs_match_loops():
    torch.manual_seed(1)
    x, t = torch.randn(4, 10), torch.rand(3, 10)
    ce, dice = batch_sigmoid_ce_cost(x, t), batch_dice_cost(x, t)
    for q in range(4):
        for n in range(3):
            bce = torch.nn.functional.binary_cross_entropy_with_logits(x[q], t[n])
            p = x[q].sigmoid()
            assert ce[q, n] == pytest.approx(float(bce), abs=1e-5)
            expected_dice = 1 - (2 * (p * t[n]).sum() + 1) / (p.sum() + t[n].sum() + 1)
            assert dice[q, n] == pytest.approx(float(expected_dice), abs=1e-5)


def test_nonfinite_costs_give_valid_assignment_and_warn_once(caplog):
    matrix = torch.tensor(
        [[float("nan"), 1.0, 2.0], [float("inf"), 0.5, float("-inf")], [0.1, float("nan"), 3.0], [1.0, 1.0, 1.0]]
    )
    matcher = HungarianMatcher(cost=FixedCost([matrix, matrix.clone()]))
    with caplog.at_level(logging.WARNING, logger="mask2former_sim.modeling.matcher"):
        indices = matcher(fake_outputs(2, 4), [fake_target(3), fake_target(3)])
    assert sum("non-finite" in r.getMessage() for r in caplog.records) == 1
    finite, _ = sanitize_cost(matrix)
    for rows, cols in indices:
        check_valid(rows, cols, 4, 3)
        assert float(finite[rows, cols].double().sum()) == pytest.approx(brute_force_min_cost(finite.double().numpy()))
    # the -inf entry is the best pair, the NaN entries are avoided
    rows, cols = indices[0]
    pairs = set(zip(rows.tolist(), cols.tolist()))
    assert (1, 2) in pairs and (0, 0) not in pairs and (2, 1) not in pairs


def test_nan_logits_and_masks_with_mask_cost():
    torch.manual_seed(2)
    outputs = fake_outputs(2, 6)
    outputs["pred_logits"][0, 2] = float("nan")
    outputs["pred_masks"][1] = float("nan")
    outputs["pred_masks"][0, 0, 0, 0] = float("inf")
    matcher = HungarianMatcher(cost=MaskCost(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=32))
    targets = [fake_target(3), fake_target(8)]
    indices = matcher(outputs, targets)
    check_valid(*indices[0], 6, 3)
    check_valid(*indices[1], 6, 8)


def test_empty_targets_and_aux_outputs_ignored():
    outputs = fake_outputs(2, 4)
    outputs["aux_outputs"] = [fake_outputs(2, 4)]
    matcher = HungarianMatcher(cost=MaskCost(num_points=16))
    indices = matcher(outputs, [fake_target(0), fake_target(2)])
    assert indices[0][0].numel() == 0 and indices[0][1].numel() == 0
    assert indices[0][0].dtype == torch.int64
    check_valid(*indices[1], 4, 2)


def test_wrong_cost_shape_is_reported():
    matcher = HungarianMatcher(cost=FixedCost([torch.zeros(3, 3)]))
    with pytest.raises(ValueError, match=r"expected \(num_queries, num_targets\) = \(4, 3\)"):
        matcher(fake_outputs(1, 4), [fake_target(3)])


def test_matching_runs_without_grad_and_fp32_under_autocast():
    outputs = fake_outputs(1, 4)
    outputs["pred_masks"].requires_grad_(True)
    seen = {}

    class SpyCost(MaskCost):
        def __call__(self, outputs_b, target_b):
            cost = super().__call__(outputs_b, target_b)
            seen["dtype"], seen["grad"] = cost.dtype, cost.requires_grad
            return cost

    matcher = HungarianMatcher(cost=SpyCost(num_points=16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        matcher({k: v.bfloat16() for k, v in outputs.items()}, [fake_target(2)])
    assert seen == {"dtype": torch.float32, "grad": False}
