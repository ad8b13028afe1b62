"""Box structures: the box raster, tight boxes of masks and box IoU against brute force and hand computations."""

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou as torchvision_box_iou

from mask2former_sim.structures.boxes import box_iou, box_raster, boxes_to_stride_masks, masks_to_boxes


def brute_force_box(mask: np.ndarray):
    ys, xs = np.where(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_masks_to_boxes_brute_force():
    rng = np.random.default_rng(0)
    masks = rng.random((6, 9, 13)) > 0.93
    masks[0] = False
    masks[1] = False
    masks[1, 4, 7] = True
    boxes = masks_to_boxes(torch.as_tensor(masks))
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [brute_force_box(m) for m in masks]


def test_masks_to_boxes_of_no_masks_and_of_numpy_masks():
    assert masks_to_boxes(torch.zeros(0, 5, 7, dtype=torch.bool)).shape == (0, 4)
    assert masks_to_boxes(torch.zeros(2, 0, 7, dtype=torch.bool)).tolist() == [[0.0] * 4] * 2
    masks = np.zeros((1, 6, 8), dtype=bool)
    masks[0, 2:4, 1:7] = True  # the data mapper's numpy masks, through torch.from_numpy
    boxes = masks_to_boxes(torch.from_numpy(masks)).numpy()
    assert boxes.dtype == np.float32 and boxes.tolist() == [[1.0, 2.0, 7.0, 4.0]]


def test_box_masks_cover_the_pixels_the_box_overlaps():
    boxes = torch.tensor([[3.0, 5.5, 9.9, 14.0]])
    m = boxes_to_stride_masks(boxes, 16, 16, stride=4)[0]
    full = torch.zeros(16, 16)
    full[5:14, 3:10] = 1  # rows 5.5 → 14.0 overlap pixels 5..13, columns 3.0 → 9.9 overlap 3..9
    assert torch.equal(m, full[2::4, 2::4])
    assert m[3].sum() == 0  # sampled row 14 is outside (BoxInst's int(y2) + 1 would include it)
    assert torch.equal(box_raster(boxes, 16, 16)[0], full.bool())


def test_box_mask_of_a_tight_box_samples_exactly_the_mask_extent():
    """A pasted instance's box is masks_to_boxes of its pixels (x2 = last + 1): its stride mask must contain the
    sampled cells inside the pixel extent and no cell beyond it (else the projection target includes a cell
    that the paste loss labels background)."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        mask = torch.zeros(1, 40, 40, dtype=torch.bool)
        y1, x1 = torch.randint(0, 20, (2,), generator=generator).tolist()
        y2, x2 = (
            y1 + int(torch.randint(1, 20, (), generator=generator)),
            x1 + int(torch.randint(1, 20, (), generator=generator)),
        )
        mask[0, y1:y2, x1:x2] = True
        box_mask = boxes_to_stride_masks(masks_to_boxes(mask), 40, 40, stride=4)[0]
        samples = torch.arange(10) * 4 + 2
        expected = ((samples >= y1) & (samples < y2))[:, None] & ((samples >= x1) & (samples < x2))[None, :]
        assert torch.equal(box_mask.bool(), expected)
        assert torch.equal(box_mask.bool(), mask[0, 2::4, 2::4])  # a filled rectangle: the paste mask itself


def test_box_iou_by_hand_and_as_torchvision():
    a = torch.tensor([[0.0, 0.0, 4.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0, 6.0, 2.0], [10.0, 10.0, 12.0, 12.0], [0.0, 0.0, 0.0, 0.0]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    assert iou[0].tolist() == pytest.approx([4.0 / 12.0, 0.0, 0.0])  # overlap 2x2 of 8 + 8 - 4
    assert bool(iou[1, 2].isnan())  # two empty boxes: 0 / 0, as torchvision (mask_box_iou makes it 0)
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(2, 30, 2, 2, generator=generator) * 50
    boxes1, boxes2 = (torch.cat([c.amin(1), c.amax(1)], dim=1) for c in corners)
    assert torch.equal(box_iou(boxes1, boxes2), torchvision_box_iou(boxes1, boxes2))
