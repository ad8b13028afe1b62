"""SIM pseudo masks (Eq. 6, 7, 11) and losses (Eq. 8, 9) against hand computations and per-GT references."""

import math

import pytest
import torch
import torch.nn.functional as F

from mask2former_sim.modeling.box_fit import mask_box_iou
from mask2former_sim.modeling.losses.mask import dice_loss, sigmoid_ce_loss
from mask2former_sim.modeling.losses.sim import weighted_mask_loss
from mask2former_sim.modeling.sim.pseudo_masks import (
    full_resolution_pseudo_masks,
    fuse_maps,
    gather_positives,
    instance_maps,
    mask_score,
    threshold_pseudo_mask,
)


def positive_weights(mask_probs, gt_box, stride, mu):
    """Reference Eq. 6 for ONE GT, written out per positive: w_p = exp(μ·IoU_p) / Σ exp(μ·IoU_p')."""
    ious = [float(mask_box_iou(p[None], gt_box[None], stride)[0]) for p in mask_probs]
    raw = torch.tensor([math.exp(mu * iou) for iou in ious], dtype=torch.float64)
    return (raw / raw.sum()).float()


def instance_map(mask_probs, weights):
    """Reference M_I = Σ_p w_p·σ(m_p) for one GT."""
    return sum(w * p for w, p in zip(weights, mask_probs))


def _rect(h, w, y0, y1, x0, x1, value=0.9):
    m = torch.full((h, w), 0.1)
    m[y0:y1, x0:x1] = value
    return m


def test_positive_weights_are_exp_mu_iou_normalised_by_hand():
    # stride 4; GT box = stride-4 pixels [2, 6) x [2, 6) -> input (8, 8, 24, 24)
    gt = torch.tensor([8.0, 8.0, 24.0, 24.0])
    probs = torch.stack(
        [
            _rect(10, 10, 2, 6, 2, 6),  # box (8, 8, 24, 24): IoU 1
            _rect(10, 10, 2, 6, 2, 4),  # box (8, 8, 16, 24): IoU 0.5
            torch.full((10, 10), 0.2),  # empty mask: IoU 0
        ]
    )
    group = torch.zeros(3, dtype=torch.int64)
    w, m_i = instance_maps(probs, gt.expand(3, 4), group, 1, stride=4, mu=5.0)
    raw = torch.tensor([math.exp(5 * 1.0), math.exp(5 * 0.5), math.exp(0.0)])
    torch.testing.assert_close(w, (raw / raw.sum()).float())
    torch.testing.assert_close(m_i[0], sum(wi * p for wi, p in zip(w, probs)))
    w0, _ = instance_maps(probs, gt.expand(3, 4), group, 1, stride=4, mu=0.0)
    torch.testing.assert_close(w0, torch.full((3,), 1 / 3))  # μ = 0: plain mean


def test_fusion_is_the_alpha_blend_of_eq7_everywhere():
    g = torch.Generator().manual_seed(0)
    ms, mi = torch.rand(2, 6, 6, generator=g), torch.rand(2, 6, 6, generator=g)
    torch.testing.assert_close(fuse_maps(ms, mi, 0.0), ms)
    torch.testing.assert_close(fuse_maps(ms, mi, 1.0), mi)
    torch.testing.assert_close(fuse_maps(ms, mi, 0.25), 0.75 * ms + 0.25 * mi)


def test_thresholds_give_labels_ignore_band_and_ignore_outside_the_region():
    prob = torch.tensor([[0.0, 0.3, 0.31, 0.69, 0.7, 1.0, 0.9, 0.1]])
    # the last three pixels lie on padding or outside the GT box: ignored, never foreground
    region = torch.tensor([[True, True, True, True, True, False, False, False]])
    labels, weights = threshold_pseudo_mask(prob, 0.3, 0.7, region)
    assert labels.tolist() == [[0, 0, 0, 0, 1, 0, 0, 0]]
    assert weights.tolist() == [[1, 1, 0, 0, 1, 0, 0, 0]]
    # per-instance tau_high
    labels, _ = threshold_pseudo_mask(prob[None].expand(2, -1, -1), 0.3, torch.tensor([0.7, 0.9]), region)
    assert labels[1].tolist() == [[0, 0, 0, 0, 0, 0, 0, 0]]
    labels, _ = threshold_pseudo_mask(prob, 0.3, 0.95, torch.ones_like(region))
    assert labels.tolist() == [[0, 0, 0, 0, 0, 1, 0, 0]]


def test_full_resolution_pseudo_masks_by_hand():
    # one 2x2 map at stride 2 with only the top-left cell on: bilinear x2 (align_corners False) gives
    # a_y * a_x with a = [1, 0.75, 0.25, 0] along each axis of the 4x4 input-resolution map
    prob = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]).repeat(2, 1, 1)
    a = torch.tensor([1.0, 0.75, 0.25, 0.0])
    expected_prob = a[:, None] * a[None, :]
    region = torch.ones(2, 4, 4, dtype=torch.bool)
    region[1, 0, 1] = False  # e.g. a pasted occluder
    masks = full_resolution_pseudo_masks(prob, torch.tensor([0.5, 0.7]), region, stride=2)
    assert torch.equal(masks[0], expected_prob >= 0.5)
    assert masks[0].sum() == 4 and bool(masks[0, :2, :2].all())  # 1, .75, .75, .5625
    assert masks[1].tolist() == [
        [True, False, False, False],
        [True, False, False, False],
        [False] * 4,
        [False] * 4,
    ]  # 0.75 >= 0.7 at (1, 0); (0, 1) outside the region
    # an image smaller than the padded map: cropped to the region's size
    assert full_resolution_pseudo_masks(prob[:1], torch.tensor([0.5]), region[:1, :3, :2], 2).shape == (1, 3, 2)


def test_mask_score_eq11():
    prob = torch.tensor([[[0.9, 0.8, 0.2]], [[0.1, 0.1, 0.1]]])
    labels = torch.tensor([[[1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]])
    torch.testing.assert_close(mask_score(prob, labels), torch.tensor([0.85, 0.0]))


def test_gather_positives_across_heads():
    heads = [
        [(torch.tensor([3, 7]), torch.tensor([1, 0]))],
        [(torch.tensor([2, 7]), torch.tensor([0, 1]))],
    ]
    # (head, query, position of the GT in gts), by head then in the matcher's order
    assert gather_positives(heads, 0, [0, 1], [0, 1]) == [(0, 3, 1), (0, 7, 0), (1, 2, 0), (1, 7, 1)]
    assert gather_positives(heads, 0, [1], [0]) == [(0, 3, 0)]  # GT 0 left out (e.g. pasted)
    assert gather_positives(heads, 0, [], [0, 1]) == []


@pytest.mark.parametrize("mu", [5.0, 1000.0])
def test_instance_maps_equal_the_per_gt_eq6_functions(mu):
    g = torch.Generator().manual_seed(0)
    h = w = 12
    num_gts = 4  # GT 2 gets no positive
    group = torch.tensor([0, 3, 1, 0, 3, 3, 1, 0])
    probs = torch.rand(len(group), h, w, generator=g) * 0.4
    for p in range(len(group)):  # confident rectangles of varied fit, so the IoUs differ
        y0, x0 = torch.randint(0, 6, (2,), generator=g).tolist()
        probs[p, y0 : y0 + 4 + p % 3, x0 : x0 + 3 + p % 4] = 0.9
    gt_boxes = torch.tensor(
        [[4.0, 4.0, 28.0, 24.0], [0.0, 8.0, 20.0, 40.0], [8.0, 8.0, 16.0, 16.0], [12.0, 0.0, 40.0, 32.0]]
    )
    weights, maps = instance_maps(probs, gt_boxes[group], group, num_gts, stride=4, mu=mu)
    assert torch.isfinite(weights).all() and torch.isfinite(maps).all()
    for k in range(num_gts):
        members = (group == k).nonzero(as_tuple=True)[0]
        if len(members) == 0:
            assert maps[k].abs().sum() == 0
            continue
        expected_w = positive_weights(probs[members], gt_boxes[k], stride=4, mu=mu)
        torch.testing.assert_close(weights[members], expected_w)
        torch.testing.assert_close(maps[k], instance_map(probs[members], expected_w))
    empty_w, empty_maps = instance_maps(probs[:0], gt_boxes[:0], group[:0], 2, stride=4, mu=mu)
    assert empty_w.shape == (0,) and empty_maps.shape == (2, h, w) and empty_maps.abs().sum() == 0


def _bce(x, t):
    return -(t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x))))


def test_weighted_bce_and_dice_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [0.0, 1.0, -2.0, 4.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    weights = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    num = 4.0
    bce0 = (_bce(2.0, 1) + _bce(-1.0, 0) + _bce(3.0, 0)) / 3
    assert math.isclose(float(sigmoid_ce_loss(logits, targets, num, weights)), bce0 / num, rel_tol=1e-5)
    p = torch.sigmoid(logits)
    inter = 2 * float(p[0, 0]) + 1
    den = float(p[0, 0] + p[0, 1] + p[0, 3]) + 1 + 1
    dice0 = 1 - inter / den
    dice1 = 0.0  # nothing weighted: 1 - (0 + 1) / (0 + 1)
    assert math.isclose(float(dice_loss(logits, targets, num, weights)), (dice0 + dice1) / num, rel_tol=1e-5)
    total = weighted_mask_loss(logits.view(2, 2, 2), targets.view(2, 2, 2), weights.view(2, 2, 2), num)
    assert math.isclose(float(total), (bce0 + dice0 + dice1) / num, rel_tol=1e-5)


def test_losses_take_logits_not_probabilities_and_ignore_weight_zero_pixels():
    logits = torch.tensor([[8.0, -8.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    w_all = torch.ones(1, 3)
    w_ignore = torch.tensor([[1.0, 1.0, 0.0]])
    assert float(sigmoid_ce_loss(logits, targets, 1.0, w_ignore)) < 1e-3  # confident and right
    assert float(sigmoid_ce_loss(logits, targets, 1.0, w_all)) > 0.2  # the ignored pixel counts now
    # with all weights 1 (the paste loss on real pixels): plain BCE + dice, gradients flow to the logits
    x = logits.clone().requires_grad_(True)
    loss = weighted_mask_loss(x, targets, w_all, 1.0)
    loss.backward()
    expected = F.binary_cross_entropy_with_logits(logits, targets) + dice_loss(logits, targets, 1.0, w_all)
    assert math.isclose(float(loss.detach()), float(expected), rel_tol=1e-5)
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("num", [1.0, 3.0])
def test_loss_normalised_by_number_of_instances(num):
    logits, targets = torch.zeros(2, 5), torch.ones(2, 5)
    one = sigmoid_ce_loss(logits[:1], targets[:1], 1.0, torch.ones(1, 5))
    assert math.isclose(
        float(sigmoid_ce_loss(logits, targets, num, torch.ones(2, 5))), 2 * float(one) / num, rel_tol=1e-6
    )


def test_weighted_losses_with_unit_weights_are_mask2formers_losses():
    """One BCE and one dice serve both: SIM's weighted form with W = 1 is Mask2Former's per-point form."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 40, generator=generator) * 3
    targets = (torch.rand(3, 40, generator=generator) > 0.5).float()
    ones = torch.ones(3, 40)
    torch.testing.assert_close(sigmoid_ce_loss(logits, targets, 2.0, ones), sigmoid_ce_loss(logits, targets, 2.0))
    torch.testing.assert_close(dice_loss(logits, targets, 2.0, ones), dice_loss(logits, targets, 2.0))
