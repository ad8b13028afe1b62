"""dev/false_positive_breakdown.py on hand-made images: each kind of false positive, AP50 worked out by hand
and against pycocotools' COCOeval, and AP50 with each kind removed."""

import contextlib
import io
import json

import pytest
from _coco_fixtures import box_rle
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dev.false_positive_breakdown import breakdown, main

pytestmark = [pytest.mark.dev, pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")]


def _ann(i, image_id, y1, x1, y2, x2):
    return {
        "id": i,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": 0,
        "area": (y2 - y1) * (x2 - x1),
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "segmentation": box_rle(y1, x1, y2, x2),
    }


def _det(image_id, score, y1, x1, y2, x2):
    return {"image_id": image_id, "category_id": 1, "score": score, "segmentation": box_rle(y1, x1, y2, x2)}


GT = {
    "images": [{"id": i, "height": 20, "width": 20, "file_name": f"{i}.png"} for i in (1, 2)],
    "categories": [{"id": 1, "name": "cat"}],
    "annotations": [_ann(1, 1, 0, 0, 10, 10), _ann(2, 1, 12, 12, 20, 20), _ann(3, 2, 0, 0, 10, 10)],
}
RESULTS = [
    _det(1, 0.9, 0, 0, 10, 10),  # GT 1 exactly: true positive
    _det(1, 0.8, 0, 0, 10, 8),  # IoU 0.8 with GT 1, already matched: duplicate
    _det(1, 0.7, 0, 0, 4, 10),  # IoU 0.4 with GT 1 (found): part
    _det(2, 0.65, 0, 0, 10, 9),  # IoU 0.9 with GT 3: true positive
    _det(1, 0.6, 12, 12, 20, 15),  # IoU 0.375 with GT 2, which nothing finds: near miss
    _det(1, 0.5, 0, 15, 3, 20),  # touches no GT: background
]


def _pycocotools_ap50(tmp_path):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "gt.json"))
        evaluation = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in RESULTS]), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return 100 * evaluation.stats[1]


def test_kinds_and_ap50_by_hand(tmp_path):
    s = breakdown(GT, RESULTS)
    # ranked: tp, duplicate, part, tp, near miss, background; 3 GT. Monotone precision 1 up to recall 1/3
    # (34 recall points), 0.5 up to 2/3 (33 points): (34 + 16.5) / 101
    assert s["ap50"] == pytest.approx(50.0)
    assert s["ap50"] == pytest.approx(_pycocotools_ap50(tmp_path))
    assert s["tp"] == {"all": 2, "top": 1}
    assert {k: s[k]["all"] for k in ("duplicate", "part", "near_miss", "background")} == {
        "duplicate": 1,
        "part": 1,
        "near_miss": 1,
        "background": 1,
    }
    assert (s["duplicate"]["top"], s["part"]["top"], s["near_miss"]["top"]) == (1, 1, 0)
    # without the duplicate (or the part): precision 2/3 up to recall 2/3 → (34 + 33 · 2/3) / 101
    assert s["duplicate"]["ap50_removed"] == pytest.approx(100 * 56 / 101)
    assert s["part"]["ap50_removed"] == pytest.approx(100 * 56 / 101)
    # the near miss and the background rank below the last true positive
    assert s["near_miss"]["ap50_removed"] == pytest.approx(50.0)
    assert s["background"]["ap50_removed"] == pytest.approx(50.0)
    assert s["ap50_all_false_positives_removed"] == pytest.approx(100 * 67 / 101)


def test_main_reads_named_results_and_rejects_crowd(tmp_path, capsys):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "res.json").write_text(json.dumps(RESULTS))
    summary = main(["--gt", str(tmp_path / "gt.json"), "--results", f"m={tmp_path / 'res.json'}"])
    assert summary["m"]["ap50"] == pytest.approx(50.0)
    assert "duplicate top / gain" in capsys.readouterr().out
    crowd = {**GT, "annotations": GT["annotations"] + [{**_ann(4, 2, 15, 15, 20, 20), "iscrowd": 1}]}
    with pytest.raises(ValueError, match="annotation 4"):
        breakdown(crowd, RESULTS)
