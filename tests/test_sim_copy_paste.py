"""Online weakly-supervised copy-paste (SIM §3.3, Eq. 9): the occlusion update by hand, pixel-exact pastes at input
resolution, the bank stores copies."""

import pytest
import torch

from mask2former_sim.modeling.sim.memory_bank import (
    MemoryBank,
    decode_masks,
    encode_masks,
    num_instances_to_paste,
    paste_instances,
    sample_instances,
)
from mask2former_sim.structures.boxes import box_raster

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")  # numpy 2 copy warning


def _entry(masks, image_value=200, scores=None):
    """A bank entry as :meth:`MemoryBank.push` stores it (masks at input resolution, as RLEs)."""
    k, h, w = masks.shape
    return {
        "image": torch.full((3, h, w), image_value, dtype=torch.uint8),
        "padding_mask": torch.zeros(h, w, dtype=torch.bool),
        "boxes": torch.zeros(k, 4),
        "classes": torch.arange(k) + 1,
        "masks": encode_masks(masks.bool()),
        "scores": torch.ones(k) if scores is None else scores,
    }


def test_occlusion_update_by_hand():
    h = w = 12
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    padding = torch.zeros(h, w, dtype=torch.bool)
    boxes = torch.tensor(
        [
            [2.0, 2.0, 5.0, 5.0],  # fully covered by the paste -> removed
            [1.0, 1.0, 9.0, 9.0],  # right part covered -> box shrinks to x in [1, 6)
            [10.0, 10.0, 12.0, 12.0],
        ]
    )  # untouched -> box kept exactly
    classes = torch.tensor([0, 1, 2])
    paste = torch.zeros(1, h, w)
    paste[0, 0:10, 2:10] = 1  # covers box 0 and columns 2..9 of box 1 ... and rows 0..9
    paste[0, :, 2:6] = 0  # leave columns 2..5 free again except where box 0 lies
    paste[0, 2:5, 2:5] = 1
    entry = _entry(paste, image_value=77)
    out = paste_instances(image, padding, boxes, classes, entry, torch.tensor([0]))
    occ = paste[0].bool()
    assert torch.equal(out["occlusion"], occ)
    assert torch.equal(out["image"][:, occ], torch.full((3, int(occ.sum())), 77, dtype=torch.uint8))
    assert torch.equal(out["image"][:, ~occ], torch.zeros(3, int((~occ).sum()), dtype=torch.uint8))
    # instance 0 removed; instance 1: remaining pixels of its raster box [1, 9) x [1, 9) minus the paste
    remaining = box_raster(boxes[1:2], h, w)[0] & ~occ
    ys, xs = remaining.nonzero(as_tuple=True)
    expected_box1 = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    assert out["classes"].tolist() == [1, 2, 1]
    torch.testing.assert_close(out["boxes"][0], expected_box1)
    assert expected_box1.tolist() == [1.0, 1.0, 6.0, 9.0]
    torch.testing.assert_close(out["boxes"][1], boxes[2])
    assert out["pasted"].tolist() == [False, False, True]
    torch.testing.assert_close(out["boxes"][2], torch.tensor([2.0, 0.0, 10.0, 10.0]))  # tight box of the paste
    assert torch.equal(out["paste_masks"][0], occ)
    # the projection target of instance 1 is box minus paste: not a rectangle
    target = box_raster(out["boxes"][:1], h, w)[0] & ~occ
    assert int(target.sum()) < int(box_raster(out["boxes"][:1], h, w)[0].sum())


def test_paste_is_pixel_exact_at_input_resolution_and_respects_padding():
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    padding = torch.zeros(8, 8, dtype=torch.bool)
    padding[:, 6:] = True
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    for i in range(7):  # a diagonal staircase: not expressible with 4x4 (stride-4) blocks
        mask[0, i, i : i + 2] = True
    out = paste_instances(
        image, padding, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), _entry(mask), torch.tensor([0])
    )
    expected = mask[0] & ~padding  # padding columns 6-7 are not pasted
    assert torch.equal(out["paste_masks"][0], expected)
    assert torch.equal(out["occlusion"], expected)
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 0.0, 6.0, 6.0]]))


def test_rle_round_trip_and_a_smaller_target_image():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 9, 7, generator=g) > 0.5
    rles = encode_masks(masks)
    assert torch.equal(decode_masks(rles, torch.tensor([2, 0])), masks[[2, 0]])
    assert decode_masks(rles, torch.zeros(0, dtype=torch.int64)).shape == (0, 9, 7)
    # pasting a 9x7 bank mask onto a 5x5 image keeps the overlapping part at the same location
    out = paste_instances(
        torch.zeros(3, 5, 5, dtype=torch.uint8),
        torch.zeros(5, 5, dtype=torch.bool),
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.int64),
        _entry(masks),
        torch.tensor([1]),
    )
    assert bool(masks[1, :5, :5].any())
    assert torch.equal(out["paste_masks"][0], masks[1, :5, :5])


def test_bank_stores_copies_and_is_fifo():
    bank = MemoryBank(2)
    masks = torch.ones(1, 3, 3, dtype=torch.bool)
    entry = {
        "image": torch.full((3, 3, 3), 200, dtype=torch.uint8),
        "padding_mask": torch.zeros(3, 3, dtype=torch.bool),
        "boxes": torch.zeros(1, 4),
        "classes": torch.ones(1),
        "masks": masks,
        "scores": torch.ones(1),
    }
    bank.push(entry)
    entry["image"].fill_(5)
    entry["masks"].fill_(False)
    entry["scores"].mul_(0)
    stored = bank.entries[0]
    assert int(stored["image"][0, 0, 0]) == 200 and float(stored["scores"][0]) == 1
    assert bool(decode_masks(stored["masks"], torch.tensor([0])).all())
    bank.push({**entry, "image": torch.full((3, 3, 3), 1, dtype=torch.uint8)})
    bank.push({**entry, "image": torch.full((3, 3, 3), 2, dtype=torch.uint8)})
    assert len(bank) == 2 and [int(e["image"][0, 0, 0]) for e in bank.entries] == [1, 2]
    bank.push({**entry, "classes": torch.ones(0), "masks": torch.ones(0, 3, 3, dtype=torch.bool)})  # nothing
    assert len(bank) == 2


def test_number_and_sampling_of_pasted_instances():
    assert [num_instances_to_paste(n, 0.25, 1, 3) for n in (1, 2, 4, 6, 10, 20)] == [1, 1, 1, 2, 3, 3]
    g = torch.Generator().manual_seed(0)
    scores = torch.tensor([1.0, 0.5, 0.0])
    counts = torch.zeros(3)
    for _ in range(400):
        counts[sample_instances(scores, 1, 3.0, generator=g)] += 1
    assert counts[2] == 0 and counts[0] > 5 * counts[1]  # ∝ S^3: 1 vs 0.125
    picked = sample_instances(torch.ones(5), 3, 3.0, generator=g)
    assert len(set(picked.tolist())) == 3
