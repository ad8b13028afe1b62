"""tools/export_onnx.py: the ONNX graph run by onnxruntime gives the eager model's instances on real photos
(mask IoU >= 0.99, scores within 1e-3), with the same resize and post-processing."""

import os

import numpy as np
import pytest
import torch

from mask2former_sim.data import catalog

pytest.importorskip("onnxruntime")
from tools import export_onnx  # noqa: E402

PHOTOS = os.path.join(catalog.shared_data_root(), "coco-subset-128", "images")
TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "cpu", "tiny-overfit.yaml")


def test_fit_to_size_keeps_the_aspect_ratio_and_pads():
    image = np.full((40, 100, 3), 200, dtype=np.uint8)
    tensor, resized = export_onnx.fit_to_size(image, (64, 96))
    assert tensor.shape == (1, 3, 64, 96) and resized == (38, 96)
    assert float(tensor[0, :, :38].min()) == pytest.approx(200.0, abs=1e-3)  # bilinear weights sum to 1 within rounding
    assert float(tensor[0, :, 38:].abs().max()) == 0.0


def test_onnxruntime_matches_the_eager_model_on_two_photos(tmp_path):
    photos = sorted(os.path.join(PHOTOS, f) for f in os.listdir(PHOTOS))[:2] if os.path.isdir(PHOTOS) else []
    if len(photos) < 2:
        pytest.skip(f"shared data not found: {PHOTOS}")
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"
    from mask2former_sim.config import get_cfg
    from mask2former_sim.modeling import build_model

    torch.save({"model": build_model(get_cfg(TINY)).state_dict()}, weights)
    out = tmp_path / "model.onnx"
    result = export_onnx.main(
        [
            "--config-file",
            TINY,
            "--weights",
            str(weights),
            "--size",
            "96",
            "128",
            "--output",
            str(out),
            "--check",
            *photos,
        ]
    )
    assert out.is_file() and len(result["checks"]) == 2
    for report in result["checks"]:
        assert report["ok"] and report["instances"] == 10  # TEST.DETECTIONS_PER_IMAGE of the tiny config
        assert report["min_mask_iou"] >= 0.99 and report["max_score_diff"] <= 1e-3
    with pytest.raises(SystemExit):
        export_onnx.main(["--config-file", TINY, "--size", "100", "128", "--output", str(out)])  # not /32
