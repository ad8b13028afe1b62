"""BoxInst-M2F in the model: box targets, box matching, the boxinst loss family, and no GT mask in box mode."""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mask2former_sim.config import get_cfg
from mask2former_sim.modeling import build_model
from mask2former_sim.modeling.criterion import LossContext
from mask2former_sim.modeling.losses.boxinst import BoxInstLoss, BoxProjectionCost, BoxTargets
from mask2former_sim.modeling.matcher import HungarianMatcher
from mask2former_sim.modeling.pairwise_schedule import PairwiseSchedule, pairwise_warmup_factor

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu" / "tiny-overfit.yaml"


def _box_target(boxes, labels, size=32):
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(labels),
        "padding_mask": torch.zeros(size, size, dtype=torch.bool),
    }
    # a smooth horizontal ramp: neighbouring colours are close, so most edges pass the 0.3 similarity threshold
    raw = torch.linspace(60, 90, size).expand(3, size, size).clone()
    inputs = [{"image": raw, "instances": {"gt_boxes": target["boxes"], "gt_classes": target["labels"]}}]
    return BoxTargets(stride=4, kernel_size=3, dilation=2, theta=2.0).build_targets([target], inputs, 0)[0]


def _brute_force_min(cost: np.ndarray) -> float:
    q, n = cost.shape
    k = min(q, n)
    best = math.inf
    for rows in itertools.permutations(range(q), k):
        for cols in itertools.combinations(range(n), k) if n > q else [tuple(range(n))]:
            best = min(best, sum(cost[r, c] for r, c in zip(rows, cols)))
    return best


def test_warmup_factor():
    assert pairwise_warmup_factor(0, 100) == 0.0
    assert pairwise_warmup_factor(25, 100) == 0.25
    assert pairwise_warmup_factor(500, 100) == 1.0
    assert pairwise_warmup_factor(3, 0) == 1.0
    # START_ITER 400, warm-up 100: off before 400, then linear
    assert pairwise_warmup_factor(399, 100, 400) == 0.0
    assert pairwise_warmup_factor(400, 100, 400) == 0.0
    assert pairwise_warmup_factor(430, 100, 400) == pytest.approx(0.3)
    assert pairwise_warmup_factor(900, 100, 400) == 1.0
    assert pairwise_warmup_factor(399, 0, 400) == 0.0
    assert pairwise_warmup_factor(400, 0, 400) == 1.0


def test_projection_matcher_assigns_each_query_to_the_box_it_fits():
    target = _box_target([[0, 0, 15, 7], [16, 16, 31, 31], [4, 20, 11, 27]], [0, 1, 0])
    box_masks = target["box_masks"]
    # query i fills GT perm[i]'s box; class probabilities uninformative
    perm = [2, 0, 1]
    logits = torch.stack([box_masks[j] * 20 - 10 for j in perm] + [torch.full((8, 8), -10.0)])
    outputs = {"pred_logits": torch.zeros(1, 4, 3), "pred_masks": logits[None]}
    matcher = HungarianMatcher(cost=BoxProjectionCost(cost_class=2.0, cost_projection=5.0))
    ((rows, cols),) = matcher(outputs, [target])
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 2, 1: 0, 2: 1}


@pytest.mark.parametrize("q,n", [(4, 2), (3, 3), (2, 4), (5, 1)])
def test_box_matchers_equal_brute_force(q, n):
    gen = torch.Generator().manual_seed(q * 10 + n)
    boxes = []
    for _ in range(n):
        x1, y1 = torch.randint(0, 20, (2,), generator=gen).tolist()
        boxes.append([x1, y1, x1 + 4 + torch.randint(0, 8, (1,), generator=gen).item(), y1 + 6])
    target = _box_target(boxes, torch.randint(0, 3, (n,), generator=gen).tolist())
    outputs = {
        "pred_logits": torch.randn(1, q, 4, generator=gen),
        "pred_masks": torch.randn(1, q, 8, 8, generator=gen) * 4,
    }
    matcher = HungarianMatcher(cost=BoxProjectionCost(cost_class=2.0, cost_projection=5.0))
    c = matcher.cost_matrix({k: v[0] for k, v in outputs.items()}, target).double().numpy()
    ((rows, cols),) = matcher(outputs, [target])
    assert len(rows) == min(q, n)
    assert c[rows.numpy(), cols.numpy()].sum() == pytest.approx(_brute_force_min(c), abs=1e-6)


def test_box_matchers_survive_nonfinite_logits():
    target = _box_target([[0, 0, 15, 7], [16, 16, 31, 31]], [0, 1])
    masks = torch.randn(1, 3, 8, 8)
    masks[0, 0, 0, 0] = float("nan")
    masks[0, 1] = float("inf")
    logits = torch.randn(1, 3, 3)
    logits[0, 2] = float("nan")
    cost = BoxProjectionCost(cost_class=2.0, cost_projection=5.0)
    ((rows, cols),) = HungarianMatcher(cost=cost)({"pred_logits": logits, "pred_masks": masks}, [target])
    assert sorted(cols.tolist()) == [0, 1]


def test_boxinst_loss_matches_hand_assembly():
    target = _box_target([[0, 0, 15, 7], [16, 16, 31, 31]], [0, 1])
    torch.manual_seed(0)
    pred_masks = torch.randn(1, 3, 8, 8)
    indices = [(torch.tensor([2, 0]), torch.tensor([0, 1]))]
    loss_fn = BoxInstLoss(
        color_thresh=0.3, kernel_size=3, dilation=2, schedule=PairwiseSchedule(start_iter=0, warmup_iters=100)
    )
    out = loss_fn({"pred_masks": pred_masks}, [target], indices, LossContext(num_masks=2.0, iteration=50))
    from mask2former_sim.modeling.losses.boxinst import compute_pairwise_term, compute_project_term

    m = pred_masks[0, [2, 0]]
    b = target["box_masks"][[0, 1]]
    proj = compute_project_term(m.sigmoid(), b).sum() / 2.0
    sim = target["color_similarity"][None].expand(2, -1, -1, -1)
    total, count = compute_pairwise_term(m, sim, b, 0.3)
    assert count.item() > 0
    assert out["loss_proj"].item() == pytest.approx(proj.item())
    assert out["loss_pairwise"].item() == pytest.approx(0.5 * (total / count).item())
    # START_ITER: the same loss is 0 before it and 0.3 of the full term 30 iterations after it
    late = BoxInstLoss(
        color_thresh=0.3, kernel_size=3, dilation=2, schedule=PairwiseSchedule(start_iter=400, warmup_iters=100)
    )
    before = late({"pred_masks": pred_masks}, [target], indices, LossContext(num_masks=2.0, iteration=399))
    assert before["loss_pairwise"].item() == 0.0
    after = late({"pred_masks": pred_masks}, [target], indices, LossContext(num_masks=2.0, iteration=430))
    assert after["loss_pairwise"].item() == pytest.approx(0.3 * (total / count).item())


def _box_cfg():
    return get_cfg(str(CONFIG), ["MODEL.MASK_FORMER.SUPERVISION", "box", "MODEL.BOXINST.PAIRWISE.WARMUP_ITERS", "0"])


def test_box_mode_training_step_never_gives_the_criterion_a_mask():
    torch.manual_seed(0)
    cfg = _box_cfg()
    model = build_model(cfg).train()
    seen = []
    original = model.criterion.forward

    def spy(outputs, targets, *args, **kwargs):
        seen.extend(targets)
        return original(outputs, targets, *args, **kwargs)

    model.criterion.forward = spy

    class Sentinel:
        def __getattr__(self, name):
            raise AssertionError("a GT mask was read in box supervision")

    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    inst = {
        "gt_boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 20.0, 60.0, 60.0]]),
        "gt_classes": torch.tensor([0, 2]),
        "gt_masks": Sentinel(),
    }
    losses = model([{"image": image, "height": 64, "width": 64, "instances": inst}], iteration=0)
    heads = cfg.MODEL.MASK_FORMER.DEC_LAYERS
    expected = {"loss_ce", "loss_proj", "loss_pairwise"}
    expected |= {f"{k}_{i}" for k in ("loss_ce", "loss_proj", "loss_pairwise") for i in range(heads - 1)}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_pairwise"].item() > 0 and losses["loss_proj"].item() > 0
    assert seen and all("masks" not in t and "box_masks" in t for t in seen)
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
