"""Augmentation: boxes and masks stay consistent, padding mask, LSJ sizes, box mode never decodes masks."""

import json

import numpy as np
import pycocotools.mask
import pytest
from PIL import Image

from mask2former_sim.config import get_cfg
from mask2former_sim.data.coco import load_coco_json
from mask2former_sim.data.mapper import InstanceDatasetMapper, build_train_augmentations
from mask2former_sim.data.transforms import (
    CropTransform,
    FixedSizeCrop,
    HFlipTransform,
    PadTransform,
    RandomFlip,
    ResizeScale,
    ResizeShortestEdge,
    ResizeTransform,
    VFlipTransform,
    apply_augmentations,
    clip_boxes,
    shortest_edge_size,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def _random_blob_masks(rng, n, h, w):
    """``n`` random filled ellipses (bool (n, h, w)), each at least a few pixels across."""
    ys, xs = np.mgrid[0:h, 0:w]
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(4, h / 3), rng.uniform(4, w / 3)
        masks[i] = ((ys + 0.5 - cy) / ry) ** 2 + ((xs + 0.5 - cx) / rx) ** 2 <= 1
    return masks[masks.any(axis=(1, 2))]


def _naive_tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _naive_tight_boxes(masks):
    """(N, 4) float32 tight boxes of non-empty masks (x2 = last column + 1)."""
    return np.array([_naive_tight_box(m) for m in masks], dtype=np.float32).reshape(-1, 4)


@pytest.mark.parametrize("seed", range(8))
def test_box_of_transformed_mask_equals_transformed_box(seed):
    """LSJ chain on random masks: tight box of the transformed mask vs the transformed tight box, ≤ 1 px."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(30, 90)), int(rng.integers(30, 90))
    masks = _random_blob_masks(rng, 5, h, w)
    boxes = _naive_tight_boxes(masks)
    augs = [RandomFlip(prob=0.5), ResizeScale(0.5, 2.0, 64, 64), FixedSizeCrop((64, 64), 128)]
    image, tfm = apply_augmentations(augs, np.zeros((h, w, 3), dtype=np.uint8), rng)
    out_masks = tfm.apply_masks(masks)
    out_boxes = clip_boxes(tfm.apply_boxes(boxes), 64, 64)
    assert image.shape == (64, 64, 3) and out_masks.shape == (len(masks), 64, 64)
    for m, b in zip(out_masks, out_boxes):
        if m.sum() < 4:
            continue
        mb = np.array(_naive_tight_box(m))
        if b[0] > 0 and b[1] > 0 and b[2] < 64 and b[3] < 64:  # not cut by the crop: same box
            assert np.abs(mb - b).max() <= 1.0
        else:  # a cut object's visible part lies inside its clipped box
            assert (mb[:2] >= b[:2] - 1).all() and (mb[2:] <= b[2:] + 1).all()


def test_flip_twice_is_identity():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, size=(13, 17, 3), dtype=np.uint8)
    masks = rng.uniform(size=(2, 13, 17)) > 0.5
    boxes = np.array([[1.0, 2.0, 5.5, 9.0], [0.0, 0.0, 17.0, 13.0]])
    for t in (HFlipTransform(17), VFlipTransform(13)):
        np.testing.assert_array_equal(t.apply_image(t.apply_image(image)), image)
        np.testing.assert_array_equal(t.apply_masks(t.apply_masks(masks)), masks)
        np.testing.assert_allclose(t.apply_boxes(t.apply_boxes(boxes)), boxes)
    np.testing.assert_allclose(HFlipTransform(17).apply_boxes(boxes[:1]), [[11.5, 2.0, 16.0, 9.0]])


def test_resize_masks_are_centre_aligned_nearest():
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, 1, 2] = True
    up = ResizeTransform(4, 4, 8, 8).apply_masks(mask)[0]
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:4, 4:6] = True
    np.testing.assert_array_equal(up, expected)
    np.testing.assert_array_equal(ResizeTransform(8, 8, 4, 4).apply_masks(up[None])[0], mask[0])


def test_fixed_size_crop_pads_and_padding_mask_marks_padding():
    rng = np.random.default_rng(0)
    image = np.full((10, 30, 3), 7, dtype=np.uint8)
    out, tfm = apply_augmentations([FixedSizeCrop((16, 16), pad_value=128)], image, rng)
    assert out.shape == (16, 16, 3)
    valid = tfm.apply_masks(np.ones((1, 10, 30), dtype=bool))[0]
    expected = np.zeros((16, 16), dtype=bool)
    expected[:10, :16] = True
    np.testing.assert_array_equal(valid, expected)
    assert (out[~valid] == 128).all() and (out[valid] == 7).all()


def test_crop_and_pad_boxes_by_hand():
    boxes = np.array([[5.0, 5.0, 15.0, 12.0]])
    np.testing.assert_allclose(CropTransform(8, 2, 10, 6).apply_boxes(boxes), [[0.0, 3.0, 7.0, 6.0]])
    np.testing.assert_allclose(PadTransform(3, 4).apply_boxes(boxes), boxes)


def test_resize_scale_keeps_aspect_and_targets_image_size():
    t = ResizeScale(1.0, 1.0, 128, 128).get_transform(300, 400, np.random.default_rng(0))
    assert (t.new_h, t.new_w) == (96, 128)  # factor min(128/300, 128/400) = 0.32


def test_resize_shortest_edge_by_hand():
    assert shortest_edge_size(480, 640, 800, 1333) == (800, 1067)
    assert shortest_edge_size(100, 1000, 800, 1333) == (133, 1333)
    assert shortest_edge_size(520, 696, 128, 10000) == (128, 171)
    noop = ResizeShortestEdge([0], 1333).get_transform(50, 60, np.random.default_rng(0))
    assert noop.apply_image(np.zeros((50, 60, 3), dtype=np.uint8)).shape == (50, 60, 3)
    sizes = {
        ResizeShortestEdge([10, 12], 100, "range").get_transform(50, 60, np.random.default_rng(s)).new_h
        for s in range(40)
    }
    assert sizes == {10, 11, 12}


def test_mapper_names_select_augmentations():
    cfg = get_cfg()
    assert [type(a).__name__ for a in build_train_augmentations(cfg)] == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    cfg.INPUT.DATASET_MAPPER_NAME = "multi_scale"
    cfg.INPUT.CROP.ENABLED = True
    assert [type(a).__name__ for a in build_train_augmentations(cfg)] == [
        "RandomFlip",
        "ResizeShortestEdge",
        "RandomCrop",
    ]
    cfg.INPUT.DATASET_MAPPER_NAME = "nope"
    with pytest.raises(ValueError, match="DATASET_MAPPER_NAME"):
        build_train_augmentations(cfg)


def _rle_set(tmp_path, h=40, w=50):
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(tmp_path / "im.png")
    masks = _random_blob_masks(rng, 4, h, w)
    anns = []
    for i, m in enumerate(masks):
        rle = pycocotools.mask.encode(np.asfortranarray(m.astype(np.uint8)))
        x0, y0, x1, y1 = (int(v) for v in _naive_tight_box(m))
        anns.append(
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "iscrowd": 0,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                "area": int(m.sum()),
            }
        )
    data = {
        "images": [{"id": 1, "file_name": "im.png", "height": h, "width": w}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "blob"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    return load_coco_json(str(tmp_path / "a.json"), str(tmp_path))[0]


def test_box_mode_never_decodes_masks(tmp_path, monkeypatch):
    d = _rle_set(tmp_path)

    def boom(*args, **kwargs):
        raise AssertionError("pycocotools.mask.decode called in box mode")

    monkeypatch.setattr(pycocotools.mask, "decode", boom)
    augs = [RandomFlip(), ResizeScale(0.5, 2.0, 64, 64), FixedSizeCrop((64, 64))]
    out = InstanceDatasetMapper(augmentations=augs, with_masks=False)(d, np.random.default_rng(0))
    assert "gt_masks" not in out["instances"]
    for mode, decodes in (("mask", True), ("box", False), ("sim", False)):  # what from_config chooses per mode
        cfg = get_cfg()
        cfg.MODEL.MASK_FORMER.SUPERVISION = mode
        assert InstanceDatasetMapper.from_config(cfg).with_masks is decodes
    with pytest.raises(AssertionError, match="box mode"):
        InstanceDatasetMapper(augmentations=augs, with_masks=True)(d, np.random.default_rng(0))


def test_mask_and_box_mode_agree_on_boxes(tmp_path):
    d = _rle_set(tmp_path)
    augs = [RandomFlip(), ResizeScale(0.8, 1.5, 64, 64), FixedSizeCrop((64, 64))]
    for seed in range(4):
        m = InstanceDatasetMapper(augmentations=augs, with_masks=True)(d, np.random.default_rng(seed))
        b = InstanceDatasetMapper(augmentations=augs, with_masks=False)(d, np.random.default_rng(seed))
        assert (m["image"] == b["image"]).all() and (m["padding_mask"] == b["padding_mask"]).all()
        masks = m["instances"]["gt_masks"].numpy()
        np.testing.assert_array_equal(m["instances"]["gt_boxes"].numpy(), _naive_tight_boxes(masks))
        if len(masks) == len(b["instances"]["gt_boxes"]):
            mb, bb = m["instances"]["gt_boxes"].numpy(), b["instances"]["gt_boxes"].numpy()
            uncut = (bb[:, :2] > 0).all(axis=1) & (bb[:, 2:] < 64).all(axis=1)
            np.testing.assert_allclose(mb[uncut], bb[uncut], atol=1.0)
            assert (mb[:, :2] >= bb[:, :2] - 1).all() and (mb[:, 2:] <= bb[:, 2:] + 1).all()
        assert m["padding_mask"].shape == m["image"].shape[1:] == masks.shape[1:]


def test_mask_mode_matches_naive_decode_then_transform(tmp_path):
    """Reference: decode every mask at full size, transform, drop empties (the mapper skips far-away ones)."""
    d = _rle_set(tmp_path)
    augs = [RandomFlip(), ResizeScale(1.0, 2.0, 48, 48), FixedSizeCrop((48, 48))]
    full = np.stack([pycocotools.mask.decode(a["segmentation"]).astype(bool) for a in d["annotations"]])
    for seed in range(6):
        out = InstanceDatasetMapper(augmentations=augs, with_masks=True)(d, np.random.default_rng(seed))
        _, tfm = apply_augmentations(augs, np.zeros((40, 50, 3), dtype=np.uint8), np.random.default_rng(seed))
        ref = tfm.apply_masks(full)
        ref = ref[ref.any(axis=(1, 2))]
        np.testing.assert_array_equal(out["instances"]["gt_masks"].numpy(), ref)


def test_random_scale_and_scale_crop_mapper_keep_native_scale():
    import numpy as np

    from mask2former_sim.config import get_cfg
    from mask2former_sim.data.mapper import build_test_resize, build_train_augmentations
    from mask2former_sim.data.transforms import RandomScale

    rng = np.random.default_rng(0)
    for _ in range(20):
        tfm = RandomScale(1.0, 2.0).get_transform(100, 60, rng)
        out = tfm.apply_image(np.zeros((100, 60, 3), dtype=np.uint8))
        factor = out.shape[0] / 100
        assert 1.0 <= factor <= 2.0 and abs(out.shape[1] - 60 * factor) <= 1
    cfg = get_cfg(
        overrides=[
            "INPUT.DATASET_MAPPER_NAME",
            "scale_crop",
            "INPUT.IMAGE_SIZE",
            "64",
            "INPUT.MIN_SCALE",
            "2.0",
            "INPUT.MAX_SCALE",
            "2.0",
            "INPUT.TEST_SCALE",
            "1.5",
        ]
    )
    augs = build_train_augmentations(cfg)
    assert [type(a).__name__ for a in augs] == ["RandomFlip", "RandomScale", "FixedSizeCrop"]
    test_tfm = build_test_resize(cfg).get_transform(40, 30, rng)
    assert test_tfm.apply_image(np.zeros((40, 30, 3), dtype=np.uint8)).shape[:2] == (60, 45)
