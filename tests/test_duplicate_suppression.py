"""dev/duplicate_suppression.py: greedy mask NMS by hand, and a duplicate that costs AP."""

import json

import pytest
from _coco_fixtures import box_rle

from dev.duplicate_suppression import main, mask_nms

pytestmark = [pytest.mark.dev, pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")]


def test_nms_keeps_the_best_of_each_overlapping_group():
    dets = [
        {"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": box_rle(0, 0, 10, 9)},  # IoU 0.9 with the next
        {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": box_rle(0, 0, 10, 10)},
        {"image_id": 1, "category_id": 1, "score": 0.4, "segmentation": box_rle(12, 12, 18, 18)},  # apart: kept
        {"image_id": 1, "category_id": 2, "score": 0.3, "segmentation": box_rle(0, 0, 10, 10)},  # other class: kept
    ]
    kept = mask_nms(dets, 0.5)
    assert sorted(d["score"] for d in kept) == [0.3, 0.4, 0.9]


def test_a_confident_duplicate_costs_ap_and_nms_recovers_it(tmp_path):
    gt = {
        "images": [{"id": 1, "height": 20, "width": 20, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 10, 10],
                "area": 100,
                "iscrowd": 0,
                "segmentation": box_rle(0, 0, 10, 10),
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "bbox": [12, 12, 6, 6],
                "area": 36,
                "iscrowd": 0,
                "segmentation": box_rle(12, 12, 18, 18),
            },
        ],
    }
    results = [
        {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": box_rle(0, 0, 10, 10)},
        {"image_id": 1, "category_id": 1, "score": 0.8, "segmentation": box_rle(0, 0, 10, 9)},  # duplicate of GT 1
        {"image_id": 1, "category_id": 1, "score": 0.7, "segmentation": box_rle(12, 12, 18, 18)},
    ]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    row = main(["--gt", str(tmp_path / "gt.json"), "--results", f"m={tmp_path / 'res.json'}"])["m"]
    assert row["detections"] == {"as_given": 3, "after_nms": 2}
    assert row["after_nms"]["AP50"] == pytest.approx(100.0)
    assert row["as_given"]["AP50"] < 100.0  # the duplicate ranks above the second cat


def test_a_results_spec_without_a_name_is_a_usage_error(tmp_path):
    (tmp_path / "res.json").write_text("[]")
    (tmp_path / "gt.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(SystemExit):
        main(["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "res.json")])
