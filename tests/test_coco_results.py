"""dev/coco_results.py: ``NAME=JSON`` arguments and the segm AP of a results list, against COCO's 101-point AP
computed by hand, read at the last maxDets entry (the evaluator's rule, not pycocotools' summary at 100)."""

import contextlib
import io
import json

import pytest
from _coco_fixtures import box_rle
from pycocotools.coco import COCO

from dev.coco_results import read_named_results, segm_ap

pytestmark = pytest.mark.dev


def _gt(squares, size):
    dataset = {
        "images": [{"id": 1, "width": size, "height": size, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": box_rle(*sq, size=size),
                "iscrowd": 0,
                "area": float((sq[2] - sq[0]) * (sq[3] - sq[1])),
                "bbox": [sq[1], sq[0], sq[3] - sq[1], sq[2] - sq[0]],
            }
            for i, sq in enumerate(squares)
        ],
    }
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _result(square, score, size):
    return {"image_id": 1, "category_id": 1, "segmentation": box_rle(*square, size=size), "score": score}


def test_ap_by_hand_with_a_false_positive_between_two_hits():
    """Detections by score: hit A (P 1, R 1/2), a miss (P 1/2), hit B (P 2/3, R 1). COCO's interpolated precision is
    1 at the 51 recall points 0..0.50 and 2/3 at the 50 points 0.51..1: AP = (51 + 50·2/3) / 101 at every IoU."""
    a, b, miss = (0, 0, 8, 8), (10, 10, 18, 18), (0, 12, 6, 18)
    results = [_result(a, 0.9, 20), _result(miss, 0.8, 20), _result(b, 0.7, 20)]
    expected = 100 * (51 + 50 * 2 / 3) / 101
    ap = segm_ap(_gt([a, b], 20), results)
    assert ap == pytest.approx({"AP": expected, "AP50": expected, "AP75": expected}, abs=1e-9)
    assert segm_ap(_gt([a, b], 20), []) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}


def test_ap_is_read_at_the_last_max_dets():
    """150 perfect detections of 150 squares: AP 100 with maxDets 300; capped at 100 detections recall stops at
    2/3, so precision is 1 at the 67 recall points 0..0.66 and 0 above: AP = 67/101."""
    squares = [(10 * (i // 15) + 1, 10 * (i % 15) + 1, 10 * (i // 15) + 7, 10 * (i % 15) + 7) for i in range(150)]
    results = [_result(sq, 1.0 - i / 1000, 150) for i, sq in enumerate(squares)]
    gt = _gt(squares, 150)
    assert segm_ap(gt, results, max_dets=(1, 10, 300))["AP"] == pytest.approx(100.0)
    assert segm_ap(gt, results)["AP"] == pytest.approx(100 * 67 / 101)


def test_named_results(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"image_id": 1}]))
    assert read_named_results([f"sim={path}"]) == {"sim": [{"image_id": 1}]}
    with pytest.raises(ValueError, match="NAME=JSON"):
        read_named_results([str(path)])
