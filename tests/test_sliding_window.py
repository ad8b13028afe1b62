"""Sliding-window inference against an exact fake model on a synthetic label image."""

import numpy as np
import pytest
import torch

from mask2former_sim.modeling.sliding_window import sliding_window_inference, tile_origins


def make_discs(height=300, width=400, count=50, seed=0, big=2):
    """Label image (H, W) int with ``count`` non-overlapping discs (labels 1..count), ``big`` of them wider than
    the 32-px tile overlap used below, the rest radius 5–15."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    labels = np.zeros((height, width), dtype=np.int64)
    placed = 0
    while placed < count:
        r = rng.uniform(30, 40) if placed < big else rng.uniform(5, 15)
        cy, cx = rng.uniform(r, height - r), rng.uniform(r, width - r)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if (labels[disc] > 0).any():
            continue
        placed += 1
        labels[disc] = placed
    return labels


def encode_labels(labels):
    """uint8 (3, H, W) image carrying the label of every pixel (low byte, high byte, 0)."""
    image = np.stack([labels % 256, labels // 256, np.zeros_like(labels)]).astype(np.uint8)
    return torch.from_numpy(image)


def tight_box(mask):
    """XYXY box (exclusive ends) of a non-empty bool mask, by its foreground coordinates."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def fake_infer(inputs):
    """An exact 'model': one instance per label visible in the tile, class = label % 3, score from the label."""
    outputs = []
    for inp in inputs:
        img = inp["image"].long()
        assert img.shape[1:] == (inp["height"], inp["width"])
        tile_labels = img[0] + 256 * img[1]
        ids = [int(i) for i in torch.unique(tile_labels) if i > 0]
        masks = torch.zeros(len(ids), *tile_labels.shape, dtype=torch.bool)
        for k, i in enumerate(ids):
            masks[k] = tile_labels == i
        outputs.append(
            {
                "instances": {
                    "pred_masks": masks,
                    "pred_boxes": torch.tensor([tight_box(m) for m in masks], dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.tensor([0.5 + 0.005 * i for i in ids]),
                    "pred_classes": torch.tensor([i % 3 for i in ids], dtype=torch.int64),
                }
            }
        )
    return outputs


def mask_iou(a, b):
    return (a & b).sum().item() / max((a | b).sum().item(), 1)


def test_tile_origins_cover_and_align():
    assert tile_origins(400, 128, 96) == [0, 96, 192, 272]
    assert tile_origins(300, 128, 96) == [0, 96, 172]
    assert tile_origins(100, 128, 96) == [0]
    assert tile_origins(128, 128, 96) == [0]
    for length in range(129, 700, 37):
        origins = tile_origins(length, 128, 96)
        covered = np.zeros(length, bool)
        for o in origins:
            covered[o : o + 128] = True
        assert covered.all() and origins[-1] + 128 == length
    with pytest.raises(ValueError, match="stride"):
        tile_origins(400, 64, 96)


def check_recovers_discs(result, labels, min_iou):
    masks = result["pred_masks"]
    count = int(labels.max())
    assert masks.shape[0] == count, f"{masks.shape[0]} instances for {count} discs"
    matched = set()
    for k in range(masks.shape[0]):
        ids, votes = torch.unique(labels[masks[k]], return_counts=True)
        label = int(ids[votes.argmax()])
        assert label > 0 and label not in matched
        matched.add(label)
        gt = labels == label
        assert mask_iou(masks[k], gt) >= min_iou
        assert int(result["pred_classes"][k]) == label % 3
        assert float(result["scores"][k]) == pytest.approx(0.5 + 0.005 * label)
        ys, xs = torch.nonzero(masks[k], as_tuple=True)
        expected_box = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert result["pred_boxes"][k].tolist() == expected_box
    assert len(matched) == count
    assert torch.all(result["scores"][:-1] >= result["scores"][1:])


def test_recovers_every_disc_once():
    labels = make_discs()
    result = sliding_window_inference(
        fake_infer,
        encode_labels(labels),
        300,
        400,
        tile_size=128,
        stride=96,
        dedup_iou=0.5,
        border_margin=4,
        max_dets=1000,
    )
    check_recovers_discs(result, torch.from_numpy(labels), min_iou=1.0)


def test_score_threshold_returns_the_instances_above_it_unchanged():
    """score_threshold keeps exactly the merged instances scoring at least it (scores 0.5 + 0.005 * label)."""
    labels = make_discs()
    kwargs = dict(tile_size=128, stride=96, dedup_iou=0.5, border_margin=4, max_dets=1000)
    everything = sliding_window_inference(fake_infer, encode_labels(labels), 450, 600, **kwargs)
    above = sliding_window_inference(fake_infer, encode_labels(labels), 450, 600, score_threshold=0.6, **kwargs)
    keep = everything["scores"] >= 0.6
    assert 0 < int(keep.sum()) < len(keep)
    for key in ("scores", "pred_classes", "pred_masks", "pred_boxes"):
        assert torch.equal(above[key], everything[key][keep]), key


def test_output_resized_to_original_size():
    """Input is the 2x-upsampled image; masks come back at the original size."""
    small = make_discs(150, 200, count=20, seed=3, big=0)
    up = np.kron(small, np.ones((2, 2), dtype=np.int64))
    result = sliding_window_inference(
        fake_infer,
        encode_labels(up),
        150,
        200,
        tile_size=128,
        stride=96,
        dedup_iou=0.5,
        border_margin=4,
        max_dets=1000,
    )
    assert result["pred_masks"].shape == (20, 150, 200)
    check_recovers_discs(result, torch.from_numpy(small), min_iou=0.95)


def test_max_dets_keeps_highest_scores():
    labels = make_discs(count=30, seed=5, big=0)
    result = sliding_window_inference(
        fake_infer,
        encode_labels(labels),
        300,
        400,
        tile_size=128,
        stride=96,
        dedup_iou=0.5,
        border_margin=4,
        max_dets=10,
    )
    assert result["pred_masks"].shape[0] == 10
    expected = sorted((0.5 + 0.005 * i for i in range(1, 31)), reverse=True)[:10]
    np.testing.assert_allclose(result["scores"].numpy(), expected, rtol=1e-6)


def test_small_image_single_tile_and_empty_output():
    labels = np.zeros((60, 80), dtype=np.int64)
    result = sliding_window_inference(
        fake_infer,
        encode_labels(labels),
        60,
        80,
        tile_size=128,
        stride=96,
        dedup_iou=0.5,
        border_margin=4,
        max_dets=100,
    )
    assert result["pred_masks"].shape == (0, 60, 80)
    assert result["pred_boxes"].shape == (0, 4) and result["scores"].shape == (0,)


def test_object_larger_than_a_tile_is_reassembled():
    """A disc of diameter 170 (> the 128-px tile) is cut by every tile; its pieces are merged into one mask."""
    yy, xx = np.mgrid[:300, :400]
    labels = np.zeros((300, 400), dtype=np.int64)
    labels[(yy - 150) ** 2 + (xx - 200) ** 2 <= 85**2] = 1
    labels[(yy - 30) ** 2 + (xx - 350) ** 2 <= 12**2] = 2
    result = sliding_window_inference(
        fake_infer,
        encode_labels(labels),
        300,
        400,
        tile_size=128,
        stride=96,
        dedup_iou=0.5,
        border_margin=4,
        max_dets=100,
    )
    check_recovers_discs(result, torch.from_numpy(labels), min_iou=1.0)


def test_large_object_fragments_join_whatever_the_tile_order():
    """Scores that visit far-apart tiles first leave separate fragments; later pieces must join them all."""
    yy, xx = np.mgrid[:300, :400]
    labels = np.zeros((300, 400), dtype=np.int64)
    labels[(yy - 150) ** 2 + (xx - 200) ** 2 <= 85**2] = 1
    image = encode_labels(labels)
    calls = []

    def tile_dependent_scores(inputs):
        outputs = fake_infer(inputs)
        for out in outputs:
            calls.append(len(calls))
            # alternate high/low scores so that non-adjacent tiles are visited first
            out["instances"]["scores"] = out["instances"]["scores"] * 0 + (0.9 if len(calls) % 2 else 0.3)
        return outputs

    result = sliding_window_inference(
        tile_dependent_scores,
        image,
        300,
        400,
        tile_size=128,
        stride=96,
        dedup_iou=0.5,
        border_margin=4,
        max_dets=100,
    )
    assert result["pred_masks"].shape[0] == 1
    assert mask_iou(result["pred_masks"][0], torch.from_numpy(labels == 1)) == 1.0
    assert float(result["scores"][0]) == pytest.approx(0.9)


@pytest.mark.parametrize("out_hw", [(450, 600), (200, 267), (300, 400), (451, 37)])
def test_masks_resized_over_their_boxes_equal_the_whole_image_resize(out_hw):
    """Resizing each kept mask over its box only gives the masks and boxes of resizing the image-sized masks."""
    from mask2former_sim.modeling.sliding_window import _assemble, _TileInstance
    from mask2former_sim.structures.boxes import masks_to_boxes

    rng = np.random.default_rng(0)
    kept = []
    for k in range(12):
        w, h = rng.integers(1, 60, size=2)
        x1, y1 = rng.integers(0, 400 - w), rng.integers(0, 300 - h)
        mask = rng.random((h, w)) < 0.6
        kept.append(_TileInstance((x1, y1, x1 + w, y1 + h), mask, [(0, 0, 400, 300)], 0.5, 0, False, 0))
    kept.append(_TileInstance((399, 299, 400, 300), np.ones((1, 1), bool), [(0, 0, 400, 300)], 0.5, 0, False, 0))
    result = _assemble(kept, (300, 400), out_hw)
    full = torch.zeros(len(kept), 300, 400)
    for k, c in enumerate(kept):
        full[k, c.box[1] : c.box[3], c.box[0] : c.box[2]] = torch.from_numpy(c.mask).float()
    reference = torch.nn.functional.interpolate(full[:, None], size=out_hw, mode="bilinear", align_corners=False)
    reference = reference[:, 0] > 0.5
    assert result["pred_masks"].shape == (len(kept), *out_hw)
    mismatched = (result["pred_masks"] != reference).sum().item()
    assert mismatched <= 2, mismatched  # float summation order may flip a pixel whose value is 0.5 within 1 ulp
    if mismatched == 0:
        assert torch.equal(result["pred_boxes"], masks_to_boxes(reference))
    assert result["pred_masks"].sum() > 0.2 * reference.sum()
