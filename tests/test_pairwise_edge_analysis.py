"""dev/pairwise_edge_analysis.py: the edge classes and costs of a GT mask and of its outline, counted by hand."""

import math

import pytest
import torch

from mask2former_sim.modeling.losses.boxinst import images_color_similarity

pytestmark = pytest.mark.dev


@pytest.fixture(scope="module")
def tool():
    from dev import pairwise_edge_analysis

    return pairwise_edge_analysis


def _disagreeing_edge_cost(logit):
    p = 1.0 / (1.0 + math.exp(-logit))
    return -math.log(2 * p * (1 - p))


def test_touching_same_colour_instances_by_hand(tool):
    # 16x16 image of one colour: instance A = columns 0-7, instance B = columns 8-15 (borders on the 4-px grid, so
    # no mixed cell). Every edge is kept; A's disagreeing edges start in A's box (cell columns 0-1) and end two
    # cells right, in B: per centre column 2 row offsets fit in the 4 rows -> 2 x 2 x 4 = 16 edges.
    image = torch.full((1, 3, 16, 16), 90.0)
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    sim = images_color_similarity(image, valid, 4, 3, 2, 2.0)[0]
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, :, :8] = True
    masks[1, :, 8:] = True
    boxes = torch.tensor([[0.0, 0.0, 7.0, 15.0], [8.0, 0.0, 15.0, 15.0]])
    rows = tool.instance_edge_costs(masks, boxes, sim, 4, 0.3, 3, 2, logit=6.0)
    c = _disagreeing_edge_cost(6.0)
    assert rows[0]["other instance"] == pytest.approx(16 * c, rel=1e-4)
    assert rows[0]["mixed border cell"] == 0 and rows[0]["background"] == 0
    assert rows[0]["gt_disagreeing_loss"] == pytest.approx(16 * c, rel=1e-4)
    summary = tool.summarise(rows)
    assert summary["all"]["share"]["other instance"] == pytest.approx(1.0)


def test_low_contrast_object_off_the_grid_by_hand(tool):
    # a 6x6 square at rows/cols 5-10, grey 102 on grey 100 (every edge kept): its box holds cells 1-2 x 1-2, all
    # labelled 1 and all mixed (blocks 4-7 and 8-11 straddle the border). Each of the 4 cells has 3 neighbours two
    # cells away inside the 4x4 grid, all labelled 0: 12 disagreeing edges, all of class "mixed border cell".
    image = torch.full((1, 3, 16, 16), 100.0)
    image[:, :, 5:11, 5:11] = 102.0
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    sim = images_color_similarity(image, valid, 4, 3, 2, 2.0)[0]
    assert float(sim.min()) == 0.0 and float(sim[sim > 0].min()) >= 0.3  # all in-image edges kept
    masks = torch.zeros(1, 16, 16, dtype=torch.bool)
    masks[0, 5:11, 5:11] = True
    row = tool.instance_edge_costs(masks, torch.tensor([[5.0, 5.0, 11.0, 11.0]]), sim, 4, 0.3, 3, 2, 6.0)[0]
    c = _disagreeing_edge_cost(6.0)
    assert row["mixed border cell"] == pytest.approx(12 * c, rel=1e-4)
    assert row["other instance"] == 0 and row["background"] == 0
    # the outline (mixed cells inside the box) is the same 2x2 block here: same cost, same projection
    assert row["outline_loss"] == pytest.approx(row["gt_loss"], rel=1e-5)
    assert row["outline_proj"] == pytest.approx(row["gt_proj"], abs=1e-6)
