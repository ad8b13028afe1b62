"""dev/mask_oracle.py on a hand-made image: which detections take a GT mask (box IoU of the mask's box with the
GT box), and segm AP before and after, worked out by hand."""

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
from _coco_fixtures import box_rle

from dev.mask_oracle import main

pytestmark = [pytest.mark.dev, pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")]


def _ann(i, y1, x1, y2, x2):
    return {
        "id": i,
        "image_id": 1,
        "category_id": 1,
        "iscrowd": 0,
        "area": (y2 - y1) * (x2 - x1),
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "segmentation": box_rle(y1, x1, y2, x2),
    }


def _hollow_square():
    """The 8×8 square of GT 1 with a 3×3 hole: its box is GT 1's box, its mask IoU with GT 1 is 55/64 = 0.86."""
    m = np.zeros((20, 20), np.uint8, order="F")
    m[2:10, 2:10] = 1
    m[4:7, 4:7] = 0
    rle = mask_util.encode(m)
    rle["counts"] = rle["counts"].decode()
    return rle


GT = {
    "images": [{"id": 1, "height": 20, "width": 20, "file_name": "1.png"}],
    "categories": [{"id": 1, "name": "cat"}],
    "annotations": [_ann(1, 2, 2, 10, 10), _ann(2, 12, 12, 20, 20)],
}
# as the evaluator writes them, with the box of each mask; the first in the list keeps its box in every run
RESULTS = [
    {"image_id": 1, "category_id": 1, "score": 0.8, "segmentation": box_rle(0, 14, 4, 18), "bbox": [14, 0, 4, 4]},
    # box IoU 1 with GT 1
    {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": _hollow_square(), "bbox": [2, 2, 8, 8]},
    # the top 3 rows of GT 2: box IoU 24/64 = 0.375 with GT 2, mask IoU the same
    {"image_id": 1, "category_id": 1, "score": 0.7, "segmentation": box_rle(12, 12, 15, 20), "bbox": [12, 12, 8, 3]},
]


def _run(tmp_path, *extra):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "res.json").write_text(json.dumps(RESULTS))
    out = tmp_path / "summary.json"
    main(["--gt", str(tmp_path / "gt.json"), "--results", f"m={tmp_path / 'res.json'}", "--json", str(out), *extra])
    return json.loads(out.read_text())["m"]


def test_only_the_detection_that_found_a_cat_takes_its_mask(tmp_path):
    s = _run(tmp_path)
    assert s["detections"] == {"all": 3, "replaced": 1}
    # as given: the hollow square matches GT 1 at the 8 thresholds 0.50-0.85; precision 1 up to recall 1/2 (51 of
    # 101 recall points), nothing matches GT 2
    assert s["as_given"]["AP"] == pytest.approx(100 * 0.8 * 51 / 101)
    assert s["as_given"]["AP50"] == pytest.approx(100 * 51 / 101)
    assert s["as_given"]["AP75"] == pytest.approx(100 * 51 / 101)
    # with GT 1's mask it matches at every threshold; the other two stay false positives
    assert s["gt_masks"]["AP"] == pytest.approx(100 * 51 / 101)


def test_a_lower_box_iou_lets_the_partial_detection_take_its_mask(tmp_path):
    s = _run(tmp_path, "--box-iou", "0.3")
    assert s["detections"]["replaced"] == 2
    # ranked TP, FP, TP: precision 1 up to recall 1/2 (51 points), 2/3 up to recall 1 (50 points)
    assert s["gt_masks"]["AP"] == pytest.approx(100 * (51 + 50 * 2 / 3) / 101)
    assert s["as_given"]["AP"] == pytest.approx(100 * 0.8 * 51 / 101)
