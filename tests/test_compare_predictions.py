"""dev/compare_predictions.py: a grid with a labelled row for the ground truth and one per model, drawn by the
demo's visualiser, on a generated data set with random weights."""

import os

import cv2
import numpy as np
import pytest
import torch
from _engine_fakes import make_tiny_dataset
from PIL import Image

from dev import compare_predictions
from mask2former_sim.config import get_cfg
from mask2former_sim.data import get_dataset_dicts, register_from_string
from mask2former_sim.data.catalog import remove_dataset
from mask2former_sim.data.coco import read_image
from mask2former_sim.modeling import build_model

pytestmark = pytest.mark.dev

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "cpu", "tiny-overfit.yaml")


def test_grid_has_the_gt_row_and_a_row_per_model(tmp_path):
    name = register_from_string(make_tiny_dataset(str(tmp_path / "data")))
    try:
        torch.manual_seed(0)
        weights = str(tmp_path / "model.pth")
        torch.save({"model": build_model(get_cfg(CONFIG)).state_dict()}, weights)
        out = str(tmp_path / "grid.png")
        tile = 64
        args = ["--dataset", name, "--num-images", "2", "--output", out, "--tile", str(tile)]
        args += ["--confidence-threshold", "0.0", "--model", "A", CONFIG, weights, "--model", "B", CONFIG, weights]
        grid = compare_predictions.main(args)
        first = [d for d in get_dataset_dicts(name) if len(d["annotations"]) >= 2][0]
    finally:
        remove_dataset(name)
    label_width, gap_x, gap_y = 150, 4, 6
    assert grid.shape == (3 * tile + 2 * gap_y, label_width + 2 * tile + gap_x, 3)
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), grid)
    plain = cv2.resize(read_image(first["file_name"]), (tile, tile), interpolation=cv2.INTER_AREA)
    gt_tile = grid[:tile, label_width : label_width + tile]
    assert np.abs(gt_tile.astype(int) - plain.astype(int)).max() > 40  # the GT masks and boxes are drawn
    rows = [grid[r * (tile + gap_y) : r * (tile + gap_y) + tile, label_width:] for r in range(3)]
    assert np.array_equal(rows[1], rows[2])  # the same model twice gives the same row
    assert not np.array_equal(rows[0], rows[1])
