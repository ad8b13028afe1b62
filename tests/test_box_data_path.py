"""Box supervision never reads a GT mask: from the json through the real mapper and the model to the criterion;
and a box-only json (no "segmentation" at all) trains through the real loader and ``Trainer``."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

import mask2former_sim.data.coco as coco_module
import mask2former_sim.data.mapper as mapper_module
from mask2former_sim.config import get_cfg
from mask2former_sim.data import InstanceDatasetMapper, load_coco_json, register_coco_instances
from mask2former_sim.data.catalog import remove_dataset
from mask2former_sim.engine import Trainer
from mask2former_sim.modeling import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cpu"
SIZE = 64
# (x, y, w, h) COCO boxes and category ids per image; two categories (json ids 3 and 7)
OBJECTS = [
    [((6, 8, 20, 18), 3), ((34, 30, 24, 26), 7)],
    [((10, 36, 30, 20), 7), ((40, 4, 18, 22), 3)],
    [((4, 4, 28, 28), 3), ((30, 34, 28, 24), 3)],
    [((20, 12, 26, 40), 7)],
]
# A sentinel "segmentation": a valid-looking RLE whose size cannot match any image and whose counts are not an RLE.
POISON = {"size": [1, 1], "counts": "POISON: a GT mask was read in box supervision"}


class MaskReadError(AssertionError):
    pass


def _write_dataset(root: Path, segmentation) -> str:
    """Images with one filled rectangle per object and a COCO json; ``segmentation`` None → key absent."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i, objects in enumerate(OBJECTS):
        pixels = np.full((SIZE, SIZE, 3), 40, dtype=np.uint8) + rng.integers(0, 10, (SIZE, SIZE, 3), dtype=np.uint8)
        for k, ((x, y, w, h), cat) in enumerate(objects):
            pixels[y : y + h, x : x + w] = (200, 60 + 60 * k, 30) if cat == 3 else (30, 90, 210)
            ann = {
                "id": 10 * i + k + 1,
                "image_id": i + 1,
                "category_id": cat,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            }
            if segmentation is not None:
                ann["segmentation"] = segmentation
            annotations.append(ann)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": SIZE, "width": SIZE})
    categories = [{"id": 3, "name": "red"}, {"id": 7, "name": "blue"}]
    json_file = root / "instances.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(json_file)


@pytest.fixture
def poisoned_decoders(monkeypatch):
    """Every way to turn a segmentation into a mask raises ``MaskReadError``."""

    def refuse(*args, **kwargs):
        raise MaskReadError("a segmentation was decoded in box supervision")

    for name in ("decode", "frPyObjects", "merge"):
        monkeypatch.setattr(mask_util, name, refuse)
    for module in (coco_module, mapper_module):
        for name in ("decode_segmentation", "segmentation_to_rle", "decode_rles"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


def _small_lsj(cfg):
    cfg.INPUT.IMAGE_SIZE = SIZE
    cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE = 0.5, 1.5
    return cfg


def test_box_mode_reads_no_mask_from_json_to_criterion(tmp_path, poisoned_decoders):
    dicts = load_coco_json(_write_dataset(tmp_path, POISON), str(tmp_path / "images"))
    assert all(a["segmentation"] == POISON for d in dicts for a in d["annotations"])  # the sentinels are kept

    cfg = _small_lsj(get_cfg(str(CONFIGS / "tiny-overfit.yaml")))
    cfg.MODEL.MASK_FORMER.SUPERVISION = "mask"
    with pytest.raises(MaskReadError):  # control: mask mode does go through the poisoned decoders
        InstanceDatasetMapper.from_config(cfg)(dicts[0], np.random.default_rng(0))

    cfg.MODEL.MASK_FORMER.SUPERVISION = "box"
    mapper = InstanceDatasetMapper.from_config(cfg)
    batch = [mapper(d, np.random.default_rng(i)) for i, d in enumerate(dicts)]
    assert all(set(x["instances"]) == {"gt_boxes", "gt_classes"} for x in batch)
    assert sum(len(x["instances"]["gt_boxes"]) for x in batch) > 0

    torch.manual_seed(0)
    model = build_model(cfg).train()
    seen = []
    criterion_forward = model.criterion.forward

    def spy(outputs, targets, *args, **kwargs):
        seen.extend(targets)
        return criterion_forward(outputs, targets, *args, **kwargs)

    model.criterion.forward = spy
    losses = model(batch, iteration=0)
    assert len(seen) == len(batch)
    allowed = {"labels", "boxes", "padding_mask", "box_masks", "color_similarity"}
    assert all(set(t) <= allowed and "masks" not in t for t in seen), [sorted(t) for t in seen]
    assert {"loss_ce", "loss_proj", "loss_pairwise"} <= set(losses)
    assert not any(k.startswith(("loss_mask", "loss_dice")) for k in losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_box_only_json_trains_two_iterations(tmp_path, poisoned_decoders):
    json_file = _write_dataset(tmp_path / "data", segmentation=None)
    name = "box_only_test_train"
    register_coco_instances(name, json_file, str(tmp_path / "data" / "images"))
    try:
        cfg = _small_lsj(get_cfg(str(CONFIGS / "boxinst_m2f_synthetic_tiny.yaml")))
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (name,), ()
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2
        cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 2, 2, ()
        cfg.SOLVER.CHECKPOINT_PERIOD, cfg.LOG_PERIOD = 0, 1
        cfg.DATALOADER.NUM_WORKERS = 0
        cfg.OUTPUT_DIR = str(tmp_path / "out")
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    finally:
        remove_dataset(name)
    assert os.path.isfile(tmp_path / "out" / "model_final.pth")
    with open(tmp_path / "out" / "metrics.json") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    train_rows = [r for r in rows if "loss_proj" in r]
    assert [r["iteration"] for r in train_rows] == [0, 1]
    for row in train_rows:
        assert math.isfinite(row["loss_proj"]) and math.isfinite(row["loss_pairwise"]) and row["loss_proj"] > 0
