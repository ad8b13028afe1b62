"""COCO loading and validation: every bad-input case, colour modes, box-only json, the shared COCO subset."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from mask2former_sim.data import catalog
from mask2former_sim.data.coco import load_coco_json, parse_coco_json, read_image
from mask2former_sim.data.mapper import InferenceDatasetMapper, InstanceDatasetMapper
from mask2former_sim.data.transforms import RandomFlip

COCO128 = os.path.join(catalog.shared_data_root(), "coco-subset-128")


def _write_set(tmp_path, annotations, images=None, categories=None, image_size=(20, 30)):
    """A one-image COCO set: ``img.png`` of ``image_size`` (H, W) and ``ann.json``; returns (json, root)."""
    h, w = image_size
    Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8)).save(tmp_path / "img.png")
    data = {
        "images": images if images is not None else [{"id": 1, "file_name": "img.png", "height": h, "width": w}],
        "annotations": annotations,
        "categories": categories if categories is not None else [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return str(tmp_path / "ann.json"), str(tmp_path)


def _ann(i, bbox, **extra):
    return {"id": i, "image_id": 1, "category_id": 1, "bbox": bbox, "iscrowd": 0, **extra}


def test_missing_image_file_named_at_load(tmp_path):
    json_file, root = _write_set(tmp_path, [_ann(1, [2, 2, 5, 5])])
    dicts = load_coco_json(json_file, root)
    os.remove(tmp_path / "img.png")
    with pytest.raises(FileNotFoundError, match="img.png"):
        InstanceDatasetMapper(augmentations=[], with_masks=False)(dicts[0])
    with pytest.raises(FileNotFoundError, match="img.png"):
        InferenceDatasetMapper(min_size=0, max_size=0)(dicts[0])


def test_corrupt_image_named(tmp_path):
    json_file, root = _write_set(tmp_path, [_ann(1, [2, 2, 5, 5])])
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(OSError, match="img.png"):
        InstanceDatasetMapper(augmentations=[], with_masks=False)(load_coco_json(json_file, root)[0])


def test_image_size_mismatch_named(tmp_path):
    json_file, root = _write_set(tmp_path, [_ann(1, [2, 2, 5, 5])])
    Image.fromarray(np.zeros((21, 30, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    with pytest.raises(ValueError, match="img.png.*30x21"):
        InstanceDatasetMapper(augmentations=[], with_masks=False)(load_coco_json(json_file, root)[0])


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(ValueError, match=r"bad.json.*line 2 column"):
        load_coco_json(str(path), str(tmp_path))


def test_empty_json_named(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("  \n")
    with pytest.raises(ValueError, match="empty.json is empty"):
        load_coco_json(str(path), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco_json(str(tmp_path / "missing.json"), str(tmp_path))


def test_unknown_category_names_annotation(tmp_path):
    json_file, root = _write_set(tmp_path, [_ann(1, [2, 2, 5, 5]), dict(_ann(42, [1, 1, 2, 2]), category_id=9)])
    with pytest.raises(ValueError, match=r"ann.json.*annotation id 42.*category_id 9"):
        load_coco_json(json_file, root)


def test_missing_bbox_field_names_annotation(tmp_path):
    bad = _ann(17, [1, 1, 2, 2])
    del bad["bbox"]
    json_file, root = _write_set(tmp_path, [bad])
    with pytest.raises(ValueError, match=r"ann.json.*annotation id 17.*'bbox'"):
        load_coco_json(json_file, root)


def test_missing_image_field_and_unknown_image_id(tmp_path):
    json_file, root = _write_set(tmp_path, [], images=[{"id": 1, "file_name": "img.png", "width": 30}])
    with pytest.raises(ValueError, match="height"):
        load_coco_json(json_file, root)
    json_file, root = _write_set(tmp_path, [dict(_ann(3, [1, 1, 2, 2]), image_id=99)])
    with pytest.raises(ValueError, match="annotation id 3.*image_id 99"):
        load_coco_json(json_file, root)


def test_degenerate_and_outside_boxes_skipped_with_counted_warning(tmp_path, caplog):
    anns = [
        _ann(1, [2, 2, 5, 5]),
        _ann(2, [3, 3, 0, 4]),  # zero width
        _ann(3, [3, 3, 4, -1]),  # negative height
        _ann(4, [40, 2, 5, 5]),  # right of the 30-px-wide image
        _ann(5, [-10, -10, 5, 5]),  # above-left
        _ann(6, [25, 15, 10, 10]),  # partly outside: clipped
        _ann(7, [1, 1, 2, 2], iscrowd=1),  # crowd
    ]
    json_file, root = _write_set(tmp_path, anns)
    dicts, summary = parse_coco_json(json_file, root)
    assert [a["id"] for a in dicts[0]["annotations"]] == [1, 6]
    assert dicts[0]["annotations"][1]["bbox"] == [25.0, 15.0, 30.0, 20.0]
    assert summary.dropped == {"zero/negative-size box": 2, "box outside the image": 2, "crowd": 1}
    with caplog.at_level(logging.WARNING, logger="mask2former_sim.data.coco"):
        load_coco_json(json_file, root, dataset_name="bad_boxes")
    assert "skipped 4 annotation(s)" in caplog.text
    assert "2 box outside the image" in caplog.text and "2 zero/negative-size box" in caplog.text


def test_odd_polygon_names_file_annotation_and_count(tmp_path):
    """pycocotools would drop the dangling value; the json is validated on load whatever the supervision."""
    square = [2, 2, 8, 2, 8, 8, 2, 8]
    anns = [_ann(1, [2, 2, 6, 6], segmentation=[square]), _ann(5, [2, 2, 6, 6], segmentation=[square, square[:7]])]
    json_file, root = _write_set(tmp_path, anns)
    with pytest.raises(ValueError, match=r"ann.json: annotation id 5: polygon 1 of 'segmentation' has 7 coordinates"):
        parse_coco_json(json_file, root)


def test_polygons_under_three_points_are_removed_and_counted(tmp_path, caplog):
    square = [2, 2, 8, 2, 8, 8, 2, 8]
    anns = [
        _ann(1, [2, 2, 6, 6], segmentation=[[3, 3, 5, 5], square]),  # a 2-point polygon beside a real one
        _ann(2, [2, 2, 6, 6], segmentation=[[4, 4]]),  # nothing left: the box stays, the mask is empty
    ]
    json_file, root = _write_set(tmp_path, anns)
    dicts, summary = parse_coco_json(json_file, root)
    assert [a["segmentation"] for a in dicts[0]["annotations"]] == [[square], []]
    assert summary.dropped_polygons == 2 and summary.num_instances == 2 and not summary.dropped
    assert "dropped polygons: 2 with fewer than 3 points" in summary.format("x")
    with caplog.at_level(logging.WARNING, logger="mask2former_sim.data.coco"):
        dicts = load_coco_json(json_file, root, dataset_name="short_polygons")
    assert "removed 2 polygon(s) with fewer than 3 points" in caplog.text
    masks = InstanceDatasetMapper(augmentations=[], with_masks=True)(dicts[0])["instances"]["gt_masks"]
    assert masks.shape == (1, 20, 30) and int(masks.sum()) == 36  # pycocotools fills [2, 8) x [2, 8)
    boxes = InstanceDatasetMapper(augmentations=[], with_masks=False)(dicts[0])["instances"]["gt_boxes"]
    assert len(boxes) == 2


def test_exif_rotated_image_size_mismatch_names_the_orientation_tag(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: display turned 90 degrees clockwise
    Image.fromarray(np.full((20, 30, 3), 90, dtype=np.uint8)).save(tmp_path / "photo.jpg", exif=exif)
    images = [{"id": 1, "file_name": "photo.jpg", "height": 20, "width": 30}]  # the stored, un-rotated size
    json_file, root = _write_set(tmp_path, [_ann(1, [2, 2, 5, 5])], images=images)
    assert read_image(str(tmp_path / "photo.jpg")).shape == (30, 20, 3)
    with pytest.raises(ValueError) as e:
        InstanceDatasetMapper(augmentations=[], with_masks=False)(load_coco_json(json_file, root)[0])
    message = str(e.value)
    assert "photo.jpg is 20x30 (WxH) but the annotation json says 30x20" in message
    assert "EXIF orientation tag (value 6" in message and "un-rotated" in message
    assert "re-export the json with width 20 and height 30" in message and "strip the orientation tag" in message


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P", "I;16"])
def test_other_colour_modes_load_as_rgb(tmp_path, mode):
    rgb = np.random.default_rng(0).integers(0, 255, size=(6, 7, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode) if mode != "I;16" else Image.fromarray(rgb[..., 0].astype(np.uint16))
    img.save(tmp_path / "x.png")
    out = read_image(str(tmp_path / "x.png"))
    assert out.shape == (6, 7, 3) and out.dtype == np.uint8
    if mode == "RGBA":
        np.testing.assert_array_equal(out, rgb)
    if mode == "L":
        np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_box_only_json_loads_and_maps_in_box_mode(tmp_path):
    json_file, root = _write_set(tmp_path, [_ann(1, [2, 3, 10, 5]), _ann(2, [20, 0, 10, 20])])
    dicts = load_coco_json(json_file, root)
    assert "segmentation" not in dicts[0]["annotations"][0]
    out = InstanceDatasetMapper(augmentations=[RandomFlip(prob=1.0)], with_masks=False)(dicts[0])
    assert set(out["instances"]) == {"gt_boxes", "gt_classes"}
    np.testing.assert_allclose(out["instances"]["gt_boxes"].numpy(), [[18, 3, 28, 8], [0, 0, 10, 20]])
    with pytest.raises(ValueError, match="annotation id 1.*no 'segmentation'"):
        InstanceDatasetMapper(augmentations=[], with_masks=True)(dicts[0])


@pytest.mark.skipif(not os.path.isdir(COCO128), reason="shared coco-subset-128 data not present")
def test_coco_subset_counts_against_raw_json():
    json_file = os.path.join(COCO128, "annotations", "instances_train2017.json")
    with open(json_file) as f:
        raw = json.load(f)
    sizes = {im["id"]: (im["width"], im["height"]) for im in raw["images"]}
    crowd = [a for a in raw["annotations"] if a["iscrowd"]]
    usable = 0
    for a in raw["annotations"]:
        x, y, w, h = a["bbox"]
        W, H = sizes[a["image_id"]]
        if not a["iscrowd"] and w > 0 and h > 0 and min(x + w, W) > max(x, 0) and min(y + h, H) > max(y, 0):
            usable += 1
    assert len(crowd) == 13 and len(raw["annotations"]) - len(crowd) == 887
    dicts, summary = parse_coco_json(json_file, os.path.join(COCO128, "images"))
    assert len(dicts) == 128 and summary.dropped["crowd"] == 13
    assert (
        sum(len(d["annotations"]) for d in dicts)
        == usable
        == 887 - sum(v for k, v in summary.dropped.items() if k != "crowd")
    )
    assert all(not a["iscrowd"] for d in dicts for a in d["annotations"])


@pytest.mark.skipif(not os.path.isdir(COCO128), reason="shared coco-subset-128 data not present")
def test_coco_subset_image_maps_in_mask_mode():
    d = next(x for x in catalog.get_dataset_dicts("coco_subset_128") if len(x["annotations"]) >= 3)
    out = InstanceDatasetMapper(augmentations=[], with_masks=True)(d, np.random.default_rng(0))
    masks, boxes = out["instances"]["gt_masks"], out["instances"]["gt_boxes"]
    assert out["image"].shape == (3, d["height"], d["width"])
    assert masks.shape[1:] == (d["height"], d["width"]) and len(masks) == len(boxes) > 0
    assert not out["padding_mask"].any()
