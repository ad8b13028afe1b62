"""tools/label_boxes.py: one-to-one box-to-instance assignment by hand, masks restricted to their boxes, every
input annotation kept, resumable output, and the comparison with reference masks."""

import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from mask2former_sim.data import catalog
from tools import label_boxes as lb

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

NUCLEI_VAL = os.path.join(catalog.shared_data_root(), "dsb2018-nuclei", "annotations", "instances_val.json")
NUCLEI_IMAGES = os.path.join(catalog.shared_data_root(), "dsb2018-nuclei", "images")
TINY_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "cpu", "tiny-overfit.yaml"
)


def test_assignment_is_one_to_one_within_the_class_and_above_the_iou():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [8.0, 0.0, 18.0, 10.0], [30.0, 30.0, 40.0, 40.0]])
    gt_classes = torch.tensor([0, 0, 1])
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [30.0, 30.0, 40.0, 40.0]])
    # instance 1 fits box 0 better than box 1 (IoU 90/110 = 0.82 vs 30/170 = 0.18), but box 0 takes instance 0
    # (IoU 1): one-to-one leaves box 1 only instance 1 at IoU 0.18 < 0.5; instance 2 has the wrong class for box 2
    assert lb.assign_instances(gt, gt_classes, pred, torch.tensor([0, 0, 0]), 0.5) == [0, None, None]
    assert lb.assign_instances(gt, gt_classes, pred, torch.tensor([0, 0, 0]), 0.5, class_agnostic=True) == [0, None, 2]
    assert lb.assign_instances(gt, gt_classes, pred, torch.tensor([0, 0, 0]), 0.15) == [0, 1, None]
    assert lb.assign_instances(gt, gt_classes, pred[:0], torch.zeros(0, dtype=torch.int64), 0.5) == [None] * 3


def test_masks_are_cut_to_the_box_and_unfitted_boxes_fall_back_to_rectangles():
    info = {"id": 1, "height": 12, "width": 12}
    anns = [
        {"id": 7, "image_id": 1, "category_id": 3, "bbox": [2, 2, 6, 6], "extra": "kept"},
        {"id": 9, "image_id": 1, "category_id": 3, "bbox": [0, 8, 4, 4]},
    ]
    mask = torch.zeros(1, 12, 12, dtype=torch.bool)
    mask[0, 1:7, 1:7] = True  # spills one pixel over the box's top-left
    instances = {
        "pred_masks": mask,
        "pred_boxes": torch.tensor([[1.0, 1.0, 7.0, 7.0]]),
        "scores": torch.tensor([0.8]),
        "pred_classes": torch.tensor([0]),
    }
    out = lb.label_image(info, anns, instances, {3: 0}, min_iou=0.5)
    assert [a["id"] for a in out] == [7, 9] and out[0]["extra"] == "kept" and out[0]["bbox"] == [2, 2, 6, 6]
    first = mask_util.decode(out[0]["segmentation"]).astype(bool)
    expected = np.zeros((12, 12), dtype=bool)
    expected[2:7, 2:7] = True  # the mask inside the box raster [2, 8) x [2, 8)
    assert np.array_equal(first, expected) and out[0]["mask_source"] == "model"
    assert out[0]["score"] == pytest.approx(0.8)
    second = mask_util.decode(out[1]["segmentation"]).astype(bool)
    rect = np.zeros((12, 12), dtype=bool)
    rect[8:12, 0:4] = True
    assert np.array_equal(second, rect) and out[1]["mask_source"] == "box" and out[1]["score"] == 0.0
    floor = lb.label_image(info, anns, None, {3: 0}, min_iou=0.5)
    assert all(a["mask_source"] == "box" and a["score"] == 1.0 for a in floor)


def _nuclei_subset(tmp_path, num_images=4):
    if not os.path.isfile(NUCLEI_VAL):
        pytest.skip(f"shared data not found: {NUCLEI_VAL}")
    with open(NUCLEI_VAL) as f:
        data = json.load(f)
    images = data["images"][:num_images]
    ids = {im["id"] for im in images}
    boxes_only = {
        **data,
        "images": images,
        "annotations": [
            {k: v for k, v in a.items() if k != "segmentation"} for a in data["annotations"] if a["image_id"] in ids
        ],
    }
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(boxes_only))
    return str(path), boxes_only


def test_box_floor_keeps_every_annotation_and_is_scored_against_the_masks(tmp_path):
    path, boxes_only = _nuclei_subset(tmp_path)
    out = tmp_path / "floor.json"
    result = lb.main(
        [
            "--json",
            path,
            "--image-root",
            NUCLEI_IMAGES,
            "--output",
            str(out),
            "--box-masks",
            "--reference",
            NUCLEI_VAL,
            "--max-dets",
            "10",
            "100",
            "1000",
        ]
    )
    labelled = json.loads(out.read_text())
    assert [(a["id"], a["bbox"]) for a in labelled["annotations"]] == [
        (a["id"], a["bbox"]) for a in boxes_only["annotations"]
    ]
    assert result["summary"]["box_masks"] == len(boxes_only["annotations"])
    ref = result["reference"]
    assert ref["annotations_compared"] == len(boxes_only["annotations"])
    assert 0.3 < ref["mean_mask_iou"] < 1.0 and 0.0 < ref["mask_AP"] < 100.0  # rectangles are not nuclei
    assert not os.path.exists(str(out) + ".partial.jsonl")


def test_an_interrupted_run_resumes_without_redoing_images(tmp_path, monkeypatch):
    path, _ = _nuclei_subset(tmp_path)
    full = tmp_path / "full.json"
    lb.main(["--json", path, "--image-root", NUCLEI_IMAGES, "--output", str(full), "--box-masks"])
    out = tmp_path / "resumed.json"
    calls = []
    original = lb.label_image

    def failing(info, *args, **kwargs):
        calls.append(info["id"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(info, *args, **kwargs)

    monkeypatch.setattr(lb, "label_image", failing)
    with pytest.raises(KeyboardInterrupt):
        lb.main(["--json", path, "--image-root", NUCLEI_IMAGES, "--output", str(out), "--box-masks"])
    assert len(open(str(out) + ".partial.jsonl").readlines()) == 2 and not out.exists()
    monkeypatch.setattr(lb, "label_image", original)
    seen = []
    monkeypatch.setattr(lb, "label_image", lambda info, *a, **k: seen.append(info["id"]) or original(info, *a, **k))
    lb.main(["--json", path, "--image-root", NUCLEI_IMAGES, "--output", str(out), "--box-masks", "--resume"])
    assert len(seen) == 2  # the two images not done before
    assert json.loads(out.read_text())["annotations"] == json.loads(full.read_text())["annotations"]


def test_a_model_labels_boxes_through_the_predictor(tmp_path):
    from _engine_fakes import REPO, make_tiny_dataset

    from mask2former_sim.config import get_cfg
    from mask2former_sim.modeling import build_model

    register = make_tiny_dataset(str(tmp_path / "data"))
    _, json_path, image_root = register.split(":")
    config = os.path.join(REPO, "configs", "cpu", "tiny-overfit.yaml")
    cfg = get_cfg(config, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4"])
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    out = tmp_path / "labelled.json"
    result = lb.main(
        [
            "--config-file",
            config,
            "--weights",
            str(weights),
            "--json",
            json_path,
            "--image-root",
            image_root,
            "--output",
            str(out),
            "--min-box-iou",
            "0.0",
            "--reference",
            json_path,
            "--opts",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
            "4",
            "INPUT.MIN_SIZE_TEST",
            "48",
        ]
    )
    labelled = json.loads(out.read_text())
    source = json.loads(open(json_path).read())
    assert [a["id"] for a in labelled["annotations"]] == [a["id"] for a in source["annotations"]]
    assert result["summary"]["model_masks"] + result["summary"]["box_masks"] == len(source["annotations"])
    assert result["summary"]["model_masks"] > 0  # IoU 0 accepted: some instance of the class fits each box
    assert 0.0 <= result["reference"]["mean_mask_iou"] <= 1.0


def _run_expecting_exit(argv, capsys):
    """The message a failed run ends with (``parser.error`` or ``SystemExit(message)``); no traceback."""
    with pytest.raises(SystemExit) as e:
        lb.main(argv)
    message = e.value.code if isinstance(e.value.code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code != 0
    return message


def test_missing_or_bad_inputs_exit_with_one_line_naming_the_file(tmp_path, capsys):
    out = str(tmp_path / "out.json")
    good = tmp_path / "boxes.json"
    good.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    base = ["--image-root", str(tmp_path), "--output", out]

    message = _run_expecting_exit(["--json", str(tmp_path / "missing.json"), *base, "--box-masks"], capsys)
    assert "missing.json" in message and "not found" in message
    (tmp_path / "empty.json").write_text("\n")
    message = _run_expecting_exit(["--json", str(tmp_path / "empty.json"), *base, "--box-masks"], capsys)
    assert "empty.json is empty" in message and "\n" not in message
    (tmp_path / "bad.json").write_text('{"images": [,]}')
    message = _run_expecting_exit(["--json", str(tmp_path / "bad.json"), *base, "--box-masks"], capsys)
    assert "bad.json is not valid json (line 1 column" in message
    (tmp_path / "list.json").write_text("[]")
    message = _run_expecting_exit(["--json", str(tmp_path / "list.json"), *base, "--box-masks"], capsys)
    assert "list.json must be a COCO json" in message

    missing_root = ["--image-root", str(tmp_path / "no_images"), "--output", out]
    message = _run_expecting_exit(["--json", str(good), *missing_root, "--box-masks"], capsys)
    assert "--image-root" in message and "no_images" in message
    weights = ["--config-file", TINY_CONFIG, "--weights", str(tmp_path / "missing.pth")]
    message = _run_expecting_exit(["--json", str(good), *base, *weights], capsys)
    assert "--weights" in message and "missing.pth" in message
    message = _run_expecting_exit(["--json", str(good), *base], capsys)
    assert "--config-file is needed" in message
    message = _run_expecting_exit(["--json", str(good), *base, "--box-masks", "--reference", "nope.json"], capsys)
    assert "--reference" in message and "nope.json" in message
    assert not os.path.exists(out)


def test_unreadable_image_exits_naming_it_and_keeps_the_finished_images(tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not a png")
    data = {
        "images": [{"id": i, "file_name": n, "height": 8, "width": 8} for i, n in ((1, "a.png"), (2, "b.png"))],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 4, 4]} for i in (1, 2)],
        "categories": [{"id": 1, "name": "a"}],
    }
    (tmp_path / "boxes.json").write_text(json.dumps(data))
    no_instances = {
        "pred_masks": torch.zeros(0, 8, 8, dtype=torch.bool),
        "pred_boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "pred_classes": torch.zeros(0, dtype=torch.int64),
    }
    monkeypatch.setattr(lb, "build_predictor", lambda args: (lambda image: no_instances, 1))
    out = tmp_path / "out.json"
    argv = ["--json", str(tmp_path / "boxes.json"), "--image-root", str(tmp_path), "--output", str(out)]
    with pytest.raises(SystemExit) as e:
        lb.main([*argv, "--config-file", TINY_CONFIG])
    assert "boxes.json, image id 2: cannot read image file" in e.value.code and "b.png" in e.value.code
    assert len(open(str(out) + ".partial.jsonl").readlines()) == 1  # image 1 is kept for --resume
