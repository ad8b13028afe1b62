"""dev/score_factors.py: the scorings are the model's score, its two factors and each detection's best GT IoU
(checked against a numpy IoU), and the confident detections are counted against a brute-force IoU check."""

import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from _engine_fakes import make_tiny_dataset

from dev import score_factors
from mask2former_sim.config import get_cfg
from mask2former_sim.data import register_from_string
from mask2former_sim.data.catalog import remove_dataset
from mask2former_sim.modeling import build_model

pytestmark = [pytest.mark.dev, pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")]

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "cpu", "tiny-overfit.yaml")


def test_detections_factor_the_models_score():
    torch.manual_seed(0)
    model = build_model(get_cfg(CONFIG)).eval()
    x = {"image": torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8), "height": 48, "width": 64}
    inst = score_factors.detections(model, x)
    reference = model.inference([x])[0]["instances"]
    torch.testing.assert_close(inst["scores"], reference["scores"])
    assert torch.equal(inst["pred_masks"], reference["pred_masks"])
    torch.testing.assert_close(inst["class_scores"] * inst["mask_scores"], inst["scores"])


def test_confident_errors_by_brute_force():
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[0, :5, :5] = True  # matches the GT
    masks[1, :5, :4] = True  # duplicates detection 0 (IoU 0.8), also matches the GT (IoU 0.8)
    masks[2, 6:, 6:] = True  # matches nothing
    inst = {"pred_masks": masks, "scores": torch.tensor([0.9, 0.8, 0.7])}
    gt = np.zeros((10, 10), np.uint8, order="F")
    gt[:5, :5] = 1
    counts = score_factors.confident_errors(inst, [mask_util.encode(gt)], 0.5)
    assert counts == {"confident": 3, "false_positive": 1, "duplicate": 1}
    assert score_factors.confident_errors(inst, [mask_util.encode(gt)], 0.95)["confident"] == 0


def test_best_gt_iou_against_numpy():
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((4, 12, 9)) > 0.5)
    gts = [rng.random((12, 9)) > 0.6 for _ in range(3)]
    rles = [mask_util.encode(np.asfortranarray(g.astype(np.uint8))) for g in gts]
    expected = [max((m & g).sum() / (m | g).sum() for g in gts) for m in masks.numpy()]
    np.testing.assert_allclose(score_factors.best_gt_iou(masks, rles), expected)
    assert score_factors.best_gt_iou(masks, []).tolist() == [0.0] * 4


def test_main_writes_the_scorings(tmp_path):
    name = register_from_string(make_tiny_dataset(str(tmp_path / "data")))
    try:
        torch.manual_seed(0)
        cfg = get_cfg(CONFIG)
        weights = str(tmp_path / "model.pth")
        torch.save({"model": build_model(cfg).state_dict()}, weights)
        opts = ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3", "DATALOADER.NUM_WORKERS", "0"]
        summary = score_factors.main(
            ["--config-file", CONFIG, "--weights", weights, "--dataset", name, "--opts", *opts]
        )
    finally:
        remove_dataset(name)
    assert set(summary["segm"]) == {"model", "class", "mask", "oracle"}
    assert set(summary["spearman_with_iou"]) == {"model", "class", "mask"}
    quantiles = list(summary["mask_score_quantiles"].values())
    assert 0.0 <= quantiles[0] <= quantiles[1] <= quantiles[2] <= 1.0
    assert summary["confident_detections"]["gt"] > 0
