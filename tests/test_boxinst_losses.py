"""BoxInst low-level losses against skimage and hand computations."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mask2former_sim.modeling.losses.boxinst import (
    compute_pairwise_term,
    compute_project_term,
    dice_coefficient,
    images_color_similarity,
    rgb_to_lab,
    unfold_wo_center,
)
from mask2former_sim.structures.boxes import boxes_to_stride_masks

skcolor = pytest.importorskip("skimage.color")


def _shared_data() -> Path:
    import os

    return Path(os.environ.get("M2F_SIM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def test_lab_matches_skimage_on_random_pixels():
    rng = np.random.default_rng(0)
    rgb = rng.random((17, 23, 3))
    rgb[0, 0] = 0.0  # black (linear branch of every step)
    rgb[0, 1] = 1.0  # white
    rgb[0, 2] = 0.01  # dark: the XYZ ≤ 0.008856 branch
    ours = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None].double())[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - skcolor.rgb2lab(rgb)).max() < 1e-3


def test_lab_matches_skimage_on_real_images():
    from PIL import Image

    images = sorted((_shared_data() / "coco-subset-128" / "images").glob("*.jpg"))[:2]
    if not images:
        from skimage import data

        photos = [data.astronaut(), data.coffee()]
    else:
        photos = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    for photo in photos:
        rgb = photo[:120, :160].astype(np.float64) / 255.0
        ours = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - skcolor.rgb2lab(rgb)).max() < 1e-3


def test_unfold_wo_center_neighbours_and_zero_outside():
    x = torch.arange(36, dtype=torch.float64).reshape(1, 1, 6, 6)
    nb = unfold_wo_center(x, 3, 2)[0, 0]  # (8, 6, 6)
    # pixel (2, 2): neighbours at offsets (-2,-2), (-2,0), (-2,2), (0,-2), (0,2), (2,-2), (2,0), (2,2)
    expected = [x[0, 0, 2 + dy, 2 + dx].item() for dy in (-2, 0, 2) for dx in (-2, 0, 2) if (dy, dx) != (0, 0)]
    assert nb[:, 2, 2].tolist() == expected
    assert nb[0, 0, 0].item() == 0.0 and nb[7, 5, 5].item() == 0.0  # outside the map → 0


def test_color_similarity_hand_values_and_padding():
    img = torch.zeros(1, 3, 16, 16)
    img[:, :, :, 8:] = 255.0  # left half black, right half white
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    valid[:, 12:, :] = False  # bottom rows are padding
    sim = images_color_similarity(img, valid, stride=4, kernel_size=3, dilation=2, theta=2.0)
    assert sim.shape == (1, 8, 4, 4)
    # centre (0, 0) black, neighbour at (0, +2) white: Lab distance = 100 (L only) → exp(−50)
    assert sim[0, 4, 0, 0].item() == pytest.approx(math.exp(-50.0), abs=1e-12)
    # centre (0, 2) white, neighbour (0, 0)... (offset (0, −2)) black → exp(−50); same-colour edge → 1
    assert sim[0, 3, 0, 2].item() == pytest.approx(math.exp(-50.0), abs=1e-12)
    assert sim[0, 6, 0, 0].item() == pytest.approx(1.0)  # (0,0) → (2,0): both black, both valid
    # neighbour (3, 0) is padding → 0; centre row 3 is padding → all its edges 0
    assert sim[0, 6, 1, 0].item() == 0.0
    assert sim[0, :, 3].abs().sum().item() == 0.0


def test_color_similarity_of_a_mixed_border_cell_is_its_4x4_mean():
    # a cell straddling a sharp border: its 4x4 mean is a mix of the two sides (BoxInst's average pooling)
    img = torch.zeros(1, 3, 16, 16)
    img[:, :, :, 6:] = 255.0  # black columns 0-5, white columns 6-15: cell column 1 (pixels 4-7) is mixed
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    pooled = images_color_similarity(img, valid, stride=4, kernel_size=3, dilation=2, theta=2.0)
    # edge (0, 1) → (0, 3): the mixed cell (half white) differs from white: L 100 vs ~53
    lab_mixed = rgb_to_lab(torch.full((1, 3, 1, 1), 0.5))[0, :, 0, 0]
    expected = math.exp(-(100.0 - lab_mixed[0].item()) / 2.0)
    assert pooled[0, 4, 0, 1].item() == pytest.approx(expected, rel=1e-4)


def test_projection_term_hand_computed():
    scores = torch.tensor([[[0.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    box = torch.tensor([[[0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])
    # max over rows (per column): m = [0, 1, 0], B = [0, 1, 1] → 1 − 2·1/(1 + 2) = 1/3
    # max over columns (per row): m = [0.5, 1, 0], B = [1, 1, 0] → 1 − 2·1.5/(1.25 + 2) = 1 − 3/3.25
    eps = 1e-5
    expected = (1.0 - 2.0 / (3.0 + eps)) + (1.0 - 3.0 / (3.25 + eps))
    assert compute_project_term(scores, box).item() == pytest.approx(expected, rel=1e-5)
    assert dice_coefficient(box, box).item() == pytest.approx(0.0, abs=1e-5)


def test_pairwise_term_hand_computed_with_box_border_and_padding():
    # 1 instance on a 1×6 strip so that with dilation 2 only the horizontal neighbours at ±2 exist
    logits = torch.tensor([[[2.0, -1.0, 0.5, 3.0, -2.0, 0.0]]])
    p = torch.sigmoid(logits)[0, 0]
    sim = torch.zeros(1, 8, 1, 6)
    sim[0, 4] = torch.tensor([0.9, 0.2, 0.9, 0.9, 0.5, 0.0])  # neighbour at +2; last column: padding
    sim[0, 3] = torch.tensor([0.0, 0.0, 0.9, 0.1, 0.9, 0.9])  # neighbour at −2
    box = torch.tensor([[[0.0, 1.0, 1.0, 1.0, 1.0, 0.0]]])  # centre must be inside the box
    total, count = compute_pairwise_term(logits, sim, box, color_thresh=0.3)

    def nll(i, j):
        return -math.log(p[i] * p[j] + (1 - p[i]) * (1 - p[j]))

    # kept edges: +2 from 2 (0.9), 3 (0.9), 4 (0.5; crosses the box border: centre inside → counts);
    # −2 from 2 (0.9), 4 (0.9); column 0 (outside box), column 1 (+2: sim 0.2 < 0.3) and 5 (outside box) dropped.
    # The +2 edge from column 4 leaves the map; its hand-made similarity 0.5 still counts it here (real
    # similarity maps are 0 outside), so it is counted first and then removed.
    assert count.item() == 5
    sim[0, 4, 0, 4] = 0.0
    expected = nll(2, 4) + nll(3, 5) + nll(4, 2) + nll(2, 0)
    total, count = compute_pairwise_term(logits, sim, box, color_thresh=0.3)
    assert count.item() == 4
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_pairwise_term_finite_for_large_logits():
    rows = torch.tensor([50.0, 50.0, -50.0, -50.0, 50.0, 50.0])  # vertical ±2 neighbours disagree
    logits = rows[:, None].expand(6, 6)[None].clone().requires_grad_()
    sim = torch.ones(1, 8, 6, 6)
    box = torch.ones(1, 6, 6)
    total, count = compute_pairwise_term(logits, sim, box)
    loss = total / count.clamp_min(1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # rows r and r ± 2 always have opposite signs, so the 6 neighbours with dy = ±2 disagree (≈ 50 each) and the
    # 2 with dy = 0 agree (≈ 0): the mean over edges is large but finite
    assert 10.0 < loss.item() < 60.0


def _brute_projection_cost(logits, box_masks):
    cost = torch.zeros(logits.shape[0], box_masks.shape[0], dtype=torch.float64)
    for q in range(logits.shape[0]):
        p = torch.sigmoid(logits[q].double())
        for k in range(box_masks.shape[0]):
            t = box_masks[k].double()
            for dim in (0, 1):
                pp, tt = p.amax(dim), t.amax(dim)
                cost[q, k] += 1 - (2 * (pp * tt).sum() + 1) / (pp.sum() + tt.sum() + 1)
    return cost


def test_projection_dice_cost_equals_loop_and_prefers_fitting_query():
    from mask2former_sim.modeling.losses.boxinst import batch_projection_dice_cost

    torch.manual_seed(0)
    boxes = torch.tensor([[0.0, 0.0, 15.0, 7.0], [16.0, 16.0, 31.0, 31.0], [4.0, 20.0, 11.0, 27.0]])
    box_masks = boxes_to_stride_masks(boxes, 32, 32, stride=4)
    # query k is a logit map that fills exactly GT k's box; query 3 is noise
    logits = torch.cat([(box_masks * 20 - 10), torch.randn(1, 8, 8)])
    cost = batch_projection_dice_cost(logits, box_masks)
    assert torch.allclose(cost.double(), _brute_projection_cost(logits, box_masks), atol=1e-5)
    assert cost[:3].argmin(dim=1).tolist() == [0, 1, 2]
