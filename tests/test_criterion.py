"""SetCriterion with Mask2Former's families (classification, point-sampled masks) against dense hand
computations."""

import pytest
import torch
import torch.nn.functional as F

from mask2former_sim.config import get_cfg
from mask2former_sim.modeling.criterion import (
    ClassificationLoss,
    LossContext,
    SetCriterion,
    batch_instances,
    expand_weight_dict,
)
from mask2former_sim.modeling.losses import mask as mask_supervision_module
from mask2former_sim.modeling.losses.mask import (
    PointSampledMaskLoss,
    calculate_uncertainty,
    dice_loss,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    sigmoid_ce_loss,
)
from mask2former_sim.modeling.meta_arch import apply_loss_weights
from mask2former_sim.modeling.supervision import build_criterion, build_supervision


class FixedMatcher(torch.nn.Module):
    """Returns given indices for every head and counts its calls."""

    def __init__(self, indices):
        super().__init__()
        self.indices = indices
        self.calls = 0

    def forward(self, outputs, targets):
        self.calls += 1
        return self.indices


def pixel_center_grid(h: int, w: int, n: int) -> torch.Tensor:
    """(n, h*w, 2) points at the pixel centres of an h x w map, row-major."""
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)[None].repeat(n, 1, 1)


def make_criterion(matcher, num_classes=3, eos=0.1, num_aux=0, num_points=16):
    families = [
        ("labels", ClassificationLoss(num_classes=num_classes, eos_coef=eos)),
        ("masks", PointSampledMaskLoss(num_points=num_points, oversample_ratio=3.0, importance_sample_ratio=0.75)),
    ]
    weights = expand_weight_dict({"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}, num_aux)
    return SetCriterion(matcher=matcher, families=families, weight_dict=weights)


def test_point_sample_at_pixel_centres_is_exact():
    maps = torch.randn(2, 1, 5, 7)
    values = point_sample(maps, pixel_center_grid(5, 7, 2))
    torch.testing.assert_close(values, maps.flatten(2))


def test_losses_formulas_by_hand():
    x = torch.tensor([[0.0, 2.0, -1.0], [3.0, -3.0, 0.5]])
    t = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    p = torch.sigmoid(x)
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    assert float(sigmoid_ce_loss(x, t, 4.0)) == pytest.approx(float(bce.mean(1).sum() / 4.0), rel=1e-6)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    assert float(dice_loss(x, t, 4.0)) == pytest.approx(float(dice.sum() / 4.0), rel=1e-6)


def test_importance_sampling_keeps_the_most_uncertain_points():
    torch.manual_seed(0)
    logits = torch.linspace(-4, 4, 64).view(1, 1, 8, 8).repeat(3, 1, 1, 1)
    gen = torch.Generator().manual_seed(3)
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 20, 3.0, 0.75, generator=gen)
    assert coords.shape == (3, 20, 2) and coords.min() >= 0 and coords.max() <= 1
    # replay the oversampled draw: the 15 kept points are the 15 most uncertain of the 60 (in any order)
    gen = torch.Generator().manual_seed(3)
    candidates = torch.rand(3, 60, 2, generator=gen)
    unc = calculate_uncertainty(point_sample(logits, candidates))[:, 0]
    for i in range(3):
        expected = sorted(map(tuple, candidates[i][unc[i].argsort(descending=True)[:15]].tolist()))
        assert sorted(map(tuple, coords[i, :15].tolist())) == expected
    again = get_uncertain_point_coords_with_randomness(
        logits, calculate_uncertainty, 20, 3.0, 0.75, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(coords, again)


def test_labels_loss_is_weighted_cross_entropy_by_hand():
    torch.manual_seed(1)
    num_classes, num_q = 3, 4
    logits = torch.randn(2, num_q, num_classes + 1)
    targets = [
        {"labels": torch.tensor([2, 0]), "masks": torch.zeros(2, 8, 8)},
        {"labels": torch.tensor([1]), "masks": torch.zeros(1, 8, 8)},
    ]
    indices = [(torch.tensor([1, 3]), torch.tensor([1, 0])), (torch.tensor([2]), torch.tensor([0]))]
    crit = make_criterion(FixedMatcher(indices), num_classes=num_classes, eos=0.1)
    loss = crit.family("labels")({"pred_logits": logits}, targets, indices, LossContext(1.0, 0))["loss_ce"]
    cls = torch.full((2, num_q), num_classes)
    cls[0, 1], cls[0, 3], cls[1, 2] = 0, 2, 1
    num, den = 0.0, 0.0
    for b in range(2):
        for q in range(num_q):
            w = 0.1 if cls[b, q] == num_classes else 1.0
            num += w * -float(torch.log_softmax(logits[b, q], -1)[cls[b, q]])
            den += w
    assert float(loss) == pytest.approx(num / den, rel=1e-5)


def test_mask_losses_equal_dense_computation_on_full_grid(monkeypatch):
    torch.manual_seed(2)
    h, w = 6, 5
    pred = torch.randn(2, 3, h, w, requires_grad=True)
    gt = [torch.rand(2, h, w) > 0.5, torch.rand(1, h, w) > 0.5]
    targets = [{"labels": torch.tensor([0, 1]), "masks": gt[0]}, {"labels": torch.tensor([2]), "masks": gt[1]}]
    indices = [(torch.tensor([0, 2]), torch.tensor([1, 0])), (torch.tensor([1]), torch.tensor([0]))]

    def full_grid(coarse_logits, *args, **kwargs):
        return pixel_center_grid(h, w, coarse_logits.shape[0])

    monkeypatch.setattr(mask_supervision_module, "get_uncertain_point_coords_with_randomness", full_grid)
    crit = make_criterion(FixedMatcher(indices))
    losses = crit.family("masks")({"pred_masks": pred}, targets, indices, LossContext(3.0, 0))

    pairs = [(pred[0, 0], gt[0][1]), (pred[0, 2], gt[0][0]), (pred[1, 1], gt[1][0])]
    bce = sum(F.binary_cross_entropy_with_logits(x, t.float()) for x, t in pairs) / 3.0
    dice = sum(1 - (2 * (x.sigmoid() * t).sum() + 1) / (x.sigmoid().sum() + t.sum() + 1) for x, t in pairs) / 3.0
    assert losses["loss_mask"].item() == pytest.approx(bce.item(), rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice.item(), rel=1e-5)
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    assert pred.grad is not None and pred.grad[1, 0].abs().sum() == 0 and pred.grad[0, 0].abs().sum() > 0


def test_mask_losses_with_gt_at_higher_resolution(monkeypatch):
    """Stride-4 predictions vs full-resolution GT: a GT mask that is constant on 4x4 blocks gives the same loss."""
    torch.manual_seed(3)
    h, w = 4, 6
    pred = torch.randn(1, 2, h, w)
    gt_small = torch.rand(1, h, w) > 0.5
    gt_full = gt_small.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    indices = [(torch.tensor([1]), torch.tensor([0]))]
    monkeypatch.setattr(
        mask_supervision_module,
        "get_uncertain_point_coords_with_randomness",
        lambda logits, *a, **k: pixel_center_grid(h, w, logits.shape[0]),
    )
    masks = make_criterion(FixedMatcher(indices)).family("masks")
    context = LossContext(1.0, 0)
    small = masks({"pred_masks": pred}, [{"labels": torch.tensor([0]), "masks": gt_small}], indices, context)
    full = masks({"pred_masks": pred}, [{"labels": torch.tensor([0]), "masks": gt_full}], indices, context)
    for key in ("loss_mask", "loss_dice"):
        assert float(small[key]) == pytest.approx(float(full[key]), rel=1e-5)


def test_deep_supervision_keys_and_matcher_per_head():
    torch.manual_seed(4)

    def head():
        return {"pred_logits": torch.randn(1, 3, 4), "pred_masks": torch.randn(1, 3, 4, 4)}

    outputs = head()
    outputs["aux_outputs"] = [head(), head()]
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    matcher = FixedMatcher(indices)
    crit = make_criterion(matcher, num_aux=2)
    losses = crit(outputs, [{"labels": torch.tensor([1]), "masks": torch.rand(1, 16, 16) > 0.5}])
    assert matcher.calls == 3
    assert set(losses) == {f"{k}{s}" for k in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1")}
    assert set(losses) == set(crit.weight_dict)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def test_no_targets_gives_finite_losses_with_graph():
    outputs = {
        "pred_logits": torch.randn(2, 3, 4, requires_grad=True),
        "pred_masks": torch.randn(2, 3, 4, 4, requires_grad=True),
    }
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16, dtype=torch.bool)}
    crit = make_criterion(FixedMatcher([(torch.zeros(0, dtype=torch.int64),) * 2] * 2))
    losses = crit(outputs, [empty, empty])
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    sum(losses.values()).backward()
    assert outputs["pred_masks"].grad is not None


def test_from_config_weight_dict_covers_every_head():
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 10
    crit = build_criterion(cfg, build_supervision(cfg))
    heads = [""] + [f"_{i}" for i in range(9)]
    assert set(crit.weight_dict) == {f"{k}{s}" for k in ("loss_ce", "loss_mask", "loss_dice") for s in heads}
    assert crit.weight_dict["loss_ce_8"] == 2.0 and crit.weight_dict["loss_dice"] == 5.0
    assert crit.family_names == ["labels", "masks"]
    empty_weight = crit.family("labels").empty_weight
    assert float(empty_weight[-1]) == pytest.approx(0.1) and float(empty_weight[0]) == 1.0


def test_unknown_loss_key_or_non_scalar_is_an_error():
    weights = {"loss_ce": 2.0}
    weighted = apply_loss_weights({"loss_ce": torch.tensor(1.5)}, weights)
    assert float(weighted["loss_ce"]) == 3.0
    with pytest.raises(KeyError, match="loss_pairwise"):
        apply_loss_weights({"loss_ce": torch.tensor(1.0), "loss_pairwise": torch.tensor(1.0)}, weights)
    with pytest.raises(ValueError, match="scalar"):
        apply_loss_weights({"loss_ce": torch.ones(2)}, weights)


def test_unknown_or_repeated_loss_family_is_an_error():
    crit = make_criterion(FixedMatcher([]))
    with pytest.raises(KeyError, match="boxinst"):
        crit.family("boxinst")
    with pytest.raises(ValueError, match="unique"):
        SetCriterion(matcher=FixedMatcher([]), families=[("labels", None), ("labels", None)], weight_dict={})


class RecordingFamily:
    """A loss family that records its contexts and declares ``count(targets)`` as its instances."""

    def __init__(self, key, count):
        self.key = key
        self.count = count
        self.seen = []

    def num_instances(self, targets):
        return self.count(targets)

    def __call__(self, outputs, targets, indices, context):
        self.seen.append(context)
        return {self.key: outputs["pred_logits"].sum() * 0}


def test_families_receive_the_iteration_and_their_declared_instance_count():
    every = RecordingFamily("loss_x", batch_instances)
    none = RecordingFamily("loss_y", lambda targets: 0)  # supervises nothing here: the normaliser is at least 1
    crit = SetCriterion(
        matcher=FixedMatcher([(torch.tensor([0]), torch.tensor([0]))] * 2),
        families=[("x", every), ("y", none)],
        weight_dict={"loss_x": 1.0, "loss_y": 1.0},
    )
    head = {"pred_logits": torch.zeros(2, 3, 4), "pred_masks": torch.zeros(2, 3, 4, 4)}
    targets = [{"labels": torch.tensor([1, 2])}, {"labels": torch.tensor([0])}]
    crit(head, targets, iteration=17)
    assert every.seen == [LossContext(num_masks=3.0, iteration=17)]
    assert none.seen == [LossContext(num_masks=1.0, iteration=17)]


def test_a_family_that_declares_no_normaliser_is_an_error():
    def family(outputs, targets, indices, context):
        return {}

    with pytest.raises(TypeError, match="'x'.*num_instances"):
        SetCriterion(matcher=FixedMatcher([]), families=[("x", family)], weight_dict={})
