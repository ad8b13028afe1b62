"""Visualizer: masks drawn where they are, nothing elsewhere; predictions JSON round-trips through RLE."""

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from mask2former_sim.utils.visualizer import draw_instance_predictions, instances_to_json

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def make_instances():
    masks = torch.zeros(2, 60, 80, dtype=torch.bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 35:55, 40:70] = True
    return {
        "pred_masks": masks,
        "pred_boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0], [40.0, 35.0, 70.0, 55.0]]),
        "scores": torch.tensor([0.9, 0.6]),
        "pred_classes": torch.tensor([1, 0]),
    }


def test_draws_inside_masks_only():
    image = np.full((60, 80, 3), 100, dtype=np.uint8)
    drawn = draw_instance_predictions(image, make_instances(), ["cat", "dog"])
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (image == 100).all()  # input untouched
    assert (drawn[15:25, 15:25] != 100).any(axis=-1).all()  # mask interiors tinted
    assert (drawn[40:50, 2:8] == 100).all()  # far from every instance: unchanged


def test_instances_to_json_round_trip():
    inst = make_instances()
    record = instances_to_json(inst, ["cat", "dog"])["instances"]
    assert [r["class_name"] for r in record] == ["dog", "cat"]
    assert record[0]["box_xyxy"] == [10.0, 10.0, 30.0, 30.0]
    for k, r in enumerate(record):
        decoded = mask_util.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
        assert (decoded.astype(bool) == inst["pred_masks"][k].numpy()).all()
    empty = {k: v[:0] for k, v in inst.items()}
    assert instances_to_json(empty)["instances"] == []
