"""The pairwise term's schedule: a fixed start, and a start once the matched masks' running box IoU reaches a
threshold (hand-computed running means), carried by checkpoints; SIM's losses wait for its warm-up to end."""

import logging
import math

import pytest
import torch

from mask2former_sim.modeling.box_fit import mask_box_fill, mask_box_iou
from mask2former_sim.modeling.pairwise_schedule import PairwiseSchedule
from mask2former_sim.modeling.sim.supervisor import SIMSupervisor


def _square_logits(size, y1, x1, y2, x2):
    """(1, size, size) logits: +6 inside rows y1..y2-1, columns x1..x2-1, −6 elsewhere."""
    logits = torch.full((1, size, size), -6.0)
    logits[0, y1:y2, x1:x2] = 6.0
    return logits


def test_box_iou_and_fill_by_hand():
    # mask cells rows 2..5, columns 2..7 at stride 4 → box (8, 8, 32, 24); GT box (8, 8, 40, 24): IoU 384/512
    probs = _square_logits(16, 2, 2, 6, 8).sigmoid()
    gt = torch.tensor([[8.0, 8.0, 40.0, 24.0]])
    assert float(mask_box_iou(probs, gt, 4)[0]) == pytest.approx(24 * 16 / (32 * 16))
    box_mask = torch.zeros(1, 16, 16)
    box_mask[0, 2:6, 2:10] = 1  # 32 cells, 24 covered
    assert float(mask_box_fill(probs, box_mask)[0]) == pytest.approx(24 / 32)
    # an outline of the box: the same box IoU, a low fill
    outline = torch.full((1, 16, 16), -6.0)
    outline[0, 2, 2:10] = outline[0, 5, 2:10] = outline[0, 2:6, 2] = outline[0, 2:6, 9] = 6.0
    assert float(mask_box_iou(outline.sigmoid(), gt, 4)[0]) == pytest.approx(1.0)
    assert float(mask_box_fill(outline.sigmoid(), box_mask)[0]) == pytest.approx(20 / 32)


def test_fixed_schedule_is_boxinst_warmup_from_start_iter():
    schedule = PairwiseSchedule(start_iter=400, warmup_iters=100)
    assert [schedule.factor(i) for i in (0, 399, 400, 430, 500, 900)] == [0.0, 0.0, 0.0, pytest.approx(0.3), 1.0, 1.0]
    assert schedule.warmup_end() == 500


def test_adaptive_start_follows_the_running_box_iou(caplog):
    schedule = PairwiseSchedule(start_iter=2, warmup_iters=10, start_box_iou=0.6, momentum=0.5)
    gt = torch.tensor([[8.0, 8.0, 40.0, 24.0]])
    box_masks = torch.ones(1, 16, 16)
    good = _square_logits(16, 2, 2, 6, 10)  # box (8, 8, 40, 24): IoU 1
    empty = torch.full((1, 16, 16), -6.0)  # IoU 0
    expected_running = []
    running = None
    with caplog.at_level(logging.INFO, logger="mask2former_sim.modeling.pairwise_schedule"):
        for iteration, logits in enumerate([empty, good, empty, good]):
            iou = 1.0 if logits is good else 0.0
            running = iou if running is None else 0.5 * running + 0.5 * iou
            expected_running.append(running)
            stats = schedule.observe(iteration, logits, gt, box_masks)
            assert stats["box_fit/running_box_iou"] == pytest.approx(running)
            if iteration < 3:
                assert schedule.warmup_start() is None and stats["pairwise/factor"] == 0.0
    # running means 0, 0.5, 0.25, 0.625 (iteration 3 ≥ START_ITER 2 and ≥ 0.6): the warm-up starts at 3
    assert expected_running == [0.0, 0.5, 0.25, 0.625]
    assert schedule.warmup_start() == 3 and schedule.warmup_end() == 13
    assert schedule.factor(8) == pytest.approx(0.5)
    assert "the pairwise warm-up starts" in caplog.text
    # once started, the running mean stays where it was
    schedule.observe(5, empty, gt, box_masks)
    assert float(schedule.running_box_iou) == pytest.approx(0.625)


def test_adaptive_start_waits_for_start_iter():
    schedule = PairwiseSchedule(start_iter=3, warmup_iters=0, start_box_iou=0.5)
    good = _square_logits(16, 2, 2, 6, 10)
    for iteration in range(3):
        schedule.observe(iteration, good, torch.tensor([[8.0, 8.0, 40.0, 24.0]]), torch.ones(1, 16, 16))
    assert schedule.warmup_start() is None
    schedule.observe(3, good, torch.tensor([[8.0, 8.0, 40.0, 24.0]]), torch.ones(1, 16, 16))
    assert schedule.warmup_start() == 3 and schedule.factor(3) == 1.0


def test_adaptive_state_survives_a_checkpoint():
    schedule = PairwiseSchedule(start_iter=0, warmup_iters=10, start_box_iou=0.5)
    schedule.observe(7, _square_logits(16, 2, 2, 6, 10), torch.tensor([[8.0, 8.0, 40.0, 24.0]]), torch.ones(1, 16, 16))
    restored = PairwiseSchedule(start_iter=0, warmup_iters=10, start_box_iou=0.5)
    restored.load_state_dict(schedule.state_dict())
    assert restored.warmup_start() == 7 and restored.factor(12) == pytest.approx(0.5)


def test_sim_losses_wait_for_an_adaptive_pairwise_warmup():
    schedule = PairwiseSchedule(start_iter=0, warmup_iters=10, start_box_iou=0.5)
    sim = SIMSupervisor.__new__(SIMSupervisor)  # only the start rule is under test
    sim.start_iter, sim.pairwise_warmup_end = 5, schedule.warmup_end
    assert not sim.started(100)  # the pairwise term has not started
    schedule.started_at.fill_(20)
    assert not sim.started(29) and sim.started(30)
    sim.pairwise_warmup_end = None  # a fixed schedule: START_ITER alone
    assert not sim.started(4) and sim.started(5)
    assert math.isclose(schedule.factor(25), 0.5)
