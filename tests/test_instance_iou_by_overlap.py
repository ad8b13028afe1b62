"""dev/instance_iou_by_overlap.py on a hand-made image: best IoUs, the overlap split and the score cut-off."""

import json

import numpy as np
import pytest
from _coco_fixtures import box_rle

from dev.instance_iou_by_overlap import main, overlapping_flags

pytestmark = [pytest.mark.dev, pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")]


def test_overlap_flags_need_a_positive_intersection():
    boxes = [np.array([0, 0, 10, 10.0]), np.array([10, 0, 20, 10.0]), np.array([5, 5, 12, 8.0])]
    assert overlapping_flags(boxes) == [True, True, True]
    assert overlapping_flags(boxes[:2]) == [False, False]  # touching edges only


def test_best_iou_split_by_overlap(tmp_path, capsys):
    gt = {
        "images": [{"id": 1, "height": 20, "width": 20, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "segmentation": box_rle(0, 0, 10, 10)},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [8, 0, 10, 10], "segmentation": box_rle(0, 10, 10, 18)},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 14, 4, 4], "segmentation": box_rle(14, 0, 18, 4)},
        ],
    }
    results = [
        {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": box_rle(0, 0, 10, 10)},  # GT 1 exactly
        {"image_id": 1, "category_id": 1, "score": 0.8, "segmentation": box_rle(14, 0, 18, 2)},  # half of GT 3
        {"image_id": 1, "category_id": 1, "score": 0.1, "segmentation": box_rle(0, 10, 10, 18)},  # GT 2, below 0.3
    ]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    summary = main(["--gt", str(tmp_path / "gt.json"), "--results", f"m={tmp_path / 'res.json'}"])["m"]
    assert summary["overlapping"] == {"instances": 2, "mean_best_iou": 0.5, "share_iou_0.5": 0.5}
    assert summary["isolated"] == {"instances": 1, "mean_best_iou": 0.5, "share_iou_0.5": 1.0}
    assert summary["all"]["mean_best_iou"] == pytest.approx(0.5)
    low = main(["--gt", str(tmp_path / "gt.json"), "--results", f"m={tmp_path / 'res.json'}", "--min-score", "0.05"])
    assert low["m"]["overlapping"]["mean_best_iou"] == 1.0
    assert "overlapping" in capsys.readouterr().out
