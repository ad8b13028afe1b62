"""demo/demo.py end to end with a tiny random model: files written, threshold applied, bad inputs named."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mask2former_sim.config import get_cfg
from mask2former_sim.modeling import build_model
from mask2former_sim.predictor import Predictor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_OVERRIDES = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.BACKBONE.NAME",
    "resnet18",
    "MODEL.BACKBONE.FREEZE_BN",
    "False",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
    "3",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM",
    "32",
    "MODEL.SEM_SEG_HEAD.MASK_DIM",
    "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS",
    "1",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS",
    "4",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD",
    "64",
    "MODEL.SEM_SEG_HEAD.MSDA_IMPL",
    "pytorch",
    "MODEL.MASK_FORMER.HIDDEN_DIM",
    "32",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES",
    "8",
    "MODEL.MASK_FORMER.NHEADS",
    "4",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD",
    "64",
    "MODEL.MASK_FORMER.DEC_LAYERS",
    "2",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "TEST.DETECTIONS_PER_IMAGE",
    "8",
]


def load_demo():
    from demo import demo

    return demo


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    cfg = get_cfg(overrides=TINY_OVERRIDES)
    weights = root / "model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    categories = [{"id": 5, "name": "alpha"}, {"id": 7, "name": "beta"}, {"id": 9, "name": "gamma"}]
    (root / "ann.json").write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    (root / "tiny.yaml").write_text("MODEL:\n  DEVICE: cpu\n")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (90, 120), "b.jpg": (70, 60)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / name)
    overrides = TINY_OVERRIDES + [
        "MODEL.WEIGHTS",
        str(weights),
        "DATASETS.REGISTER",
        f"['demo_test:{root / 'ann.json'}:{images}']",
        "DATASETS.TEST",
        "('demo_test',)",
    ]
    return root, images, overrides


def run_demo(setup, threshold, out_name, extra_inputs=()):
    root, images, overrides = setup
    out = root / out_name
    argv = [
        "--config-file",
        str(root / "tiny.yaml"),
        "--input",
        str(images),
        *extra_inputs,
        "--output",
        str(out),
        "--confidence-threshold",
        str(threshold),
        "--opts",
        *overrides,
    ]
    code = load_demo().main(argv)
    return code, out, json.loads((out / "predictions.json").read_text())


def test_demo_writes_pngs_and_applies_threshold(setup):
    code, out, preds = run_demo(setup, 0.0, "out0")
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
    assert Image.open(out / "a.png").size == (120, 90)
    assert len(preds["images"]) == 2
    all_counts = [len(r["instances"]) for r in preds["images"]]
    assert all(c == 8 for c in all_counts)  # threshold 0 keeps every detection
    first = preds["images"][0]["instances"][0]
    assert first["class_name"] in ("alpha", "beta", "gamma")
    assert first["segmentation"]["size"] == [90, 120] and len(first["box_xyxy"]) == 4

    code, _, strict = run_demo(setup, 0.99, "out99")
    assert code == 0
    for record, count in zip(strict["images"], all_counts):
        assert len(record["instances"]) <= count
        assert all(inst["score"] >= 0.99 for inst in record["instances"])
    median = float(np.median([i["score"] for r in preds["images"] for i in r["instances"]]))
    code, _, mid = run_demo(setup, median, "out_mid")
    kept = [i["score"] for r in mid["images"] for i in r["instances"]]
    assert kept and all(s >= median for s in kept)
    assert len(kept) < sum(all_counts)


def test_demo_names_unreadable_input_and_continues(setup, tmp_path, caplog):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    code, out, preds = run_demo(setup, 0.5, "out_bad", extra_inputs=(str(bad), str(missing)))
    assert code == 1
    assert len(preds["images"]) == 2 and (out / "a.png").exists()
    errors = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert str(bad) in errors and str(missing) in errors


def test_predictor_returns_original_size(setup):
    _, _, overrides = setup
    predictor = Predictor(get_cfg(overrides=overrides))
    image = np.random.default_rng(1).integers(0, 255, (50, 75, 3), dtype=np.uint8)
    instances = predictor(image)
    assert instances["pred_masks"].shape == (8, 50, 75) and instances["pred_masks"].dtype == torch.bool
    assert instances["pred_boxes"].shape == (8, 4)
    with pytest.raises(ValueError, match="RGB uint8"):
        predictor(image[:, :, 0])


def _write_video(path, frames, fps=5):
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def test_demo_segments_every_frame_of_a_video(setup):
    import cv2

    root, _, overrides = setup
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in range(6)]
    clip = root / "clip.mp4"
    _write_video(clip, frames)
    out = root / "video_out"
    argv = [
        "--config-file",
        str(root / "tiny.yaml"),
        "--video-input",
        str(clip),
        "--output",
        str(out),
        "--confidence-threshold",
        "0.0",
        "--opts",
        *overrides,
    ]
    assert load_demo().main(argv) == 0
    written = cv2.VideoCapture(str(out / "clip.mp4"))
    count = 0
    while True:
        ok, frame = written.read()
        if not ok:
            break
        assert frame.shape == (64, 80, 3)
        count += 1
    assert count == 6
    preds = json.loads((out / "predictions.json").read_text())
    assert [f["frame"] for f in preds["frames"]] == list(range(6))
    assert all(len(f["instances"]) == 8 for f in preds["frames"])  # threshold 0: every detection
    # --max-frames stops early; a missing file is named
    argv_short = [
        "--config-file",
        str(root / "tiny.yaml"),
        "--video-input",
        str(clip),
        "--output",
        str(root / "short.mp4"),
        "--max-frames",
        "2",
        "--opts",
        *overrides,
    ]
    assert load_demo().main(argv_short) == 0
    assert len(json.loads((root / "predictions.json").read_text())["frames"]) == 2
    assert (
        load_demo().main(
            [
                "--config-file",
                str(root / "tiny.yaml"),
                "--video-input",
                str(root / "nope.mp4"),
                "--output",
                str(out),
                "--opts",
                *overrides,
            ]
        )
        == 1
    )
