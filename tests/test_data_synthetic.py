"""Synthetic generator: deterministic bytes, valid COCO json, visible-part masks, atomic first-use generation."""

import hashlib
import json
import os

import numpy as np
import pytest
from pycocotools.coco import COCO

from mask2former_sim.data import catalog, synthetic
from mask2former_sim.data.synthetic import SyntheticConfig, generate_synthetic_dataset, render_image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

SMALL = SyntheticConfig(num_train=6, num_val=3, size=64, seed=5)


def _digest(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in sorted(files):
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_synthetic_dataset(str(tmp_path / "a"), SMALL)
    b = generate_synthetic_dataset(str(tmp_path / "b"), SMALL)
    c = generate_synthetic_dataset(str(tmp_path / "c"), SyntheticConfig(num_train=6, num_val=3, size=64, seed=6))
    assert _digest(a) == _digest(b)
    assert _digest(a)["annotations/instances_train.json"] != _digest(c)["annotations/instances_train.json"]
    assert len([k for k in _digest(a) if k.endswith(".png")]) == 9
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(a, SMALL)


def test_pycocotools_loads_and_masks_match_annotations(tmp_path):
    out = generate_synthetic_dataset(str(tmp_path / "s"), SMALL)
    coco = COCO(os.path.join(out, "annotations", "instances_train.json"))
    assert sorted(coco.getCatIds()) == [1, 2, 3, 4]
    assert len(coco.getImgIds()) == 6 and len(coco.getAnnIds()) >= 6
    per_image = {}
    for ann in coco.loadAnns(coco.getAnnIds()):
        m = coco.annToMask(ann).astype(bool)
        assert m.sum() == ann["area"] >= SMALL.min_area_fraction * 64 * 64
        ys, xs = np.nonzero(m)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["iscrowd"] == 0
        per_image.setdefault(ann["image_id"], []).append(m)
    for masks in per_image.values():  # visible parts never overlap
        assert np.stack(masks).sum(axis=0).max() <= 1


def test_touching_same_class_instances_occur():
    cfg = SyntheticConfig(size=96)
    touching = 0
    for i in range(20):
        _, inst = render_image(cfg, np.random.default_rng([0, 0, i]))
        for a in range(len(inst)):
            grown = np.zeros_like(inst[a][1])
            m = inst[a][1]
            grown[1:] |= m[:-1]
            grown[:-1] |= m[1:]
            grown[:, 1:] |= m[:, :-1]
            grown[:, :-1] |= m[:, 1:]
            touching += sum(inst[b][0] == inst[a][0] and (grown & inst[b][1]).any() for b in range(a + 1, len(inst)))
    assert touching >= 5


def test_color_similarity_moves_objects_towards_background():
    def contrast(sim):
        diffs = []
        for i in range(10):
            image, inst = render_image(SyntheticConfig(size=64, color_similarity=sim), np.random.default_rng([1, 0, i]))
            fg = np.any([m for _, m in inst], axis=0) if inst else np.zeros(image.shape[:2], bool)
            diffs.append(np.abs(image[fg].mean(0) - image[~fg].mean(0)).sum())
        return float(np.mean(diffs))

    assert contrast(0.0) > 2 * contrast(0.9)


def test_builtin_synthetic_generated_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("M2F_SIM_DATASETS", str(tmp_path))
    monkeypatch.setitem(synthetic.BUILTIN_SYNTHETIC, "synthetic", SMALL)
    dicts = catalog.get_dataset_dicts("synthetic_val")
    assert len(dicts) == 3 and os.path.isfile(dicts[0]["file_name"])
    meta = catalog.get_metadata("synthetic_train")
    assert meta["thing_classes"] == list(synthetic.CLASSES)
    with open(tmp_path / "synthetic" / "generation.json") as f:
        assert json.load(f)["num_train"] == 6
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary folder left
    # a copy made with other generator parameters (an older package version) is regenerated, not reused
    monkeypatch.setitem(synthetic.BUILTIN_SYNTHETIC, "synthetic", SyntheticConfig(num_train=4, num_val=2, size=64))
    assert len(catalog.get_dataset_dicts("synthetic_val")) == 2
    with open(tmp_path / "synthetic" / "generation.json") as f:
        assert json.load(f)["num_train"] == 4
    assert len(os.listdir(tmp_path / "synthetic" / "train")) == 4
    os.remove(tmp_path / "synthetic" / "generation.json")
    with pytest.raises(FileExistsError, match="generation.json"):
        catalog.get_dataset_dicts("synthetic_val")


def test_flat_control_set_satisfies_boxinst_assumptions():
    # synthetic_flat: one-colour background, flat distinct object colours, no noise, no touching, 40-80 px objects
    cfg = synthetic.BUILTIN_SYNTHETIC["synthetic_flat"]
    assert (cfg.min_radius * cfg.size, cfg.max_radius * cfg.size) == (20.0, 40.0)  # discs 40-80 px wide
    for i in range(15):
        image, inst = render_image(cfg, np.random.default_rng([cfg.seed, 0, i]))
        labels = np.full(image.shape[:2], -1)
        for k, (_, m) in enumerate(inst):
            labels[m] = k
        assert len(np.unique(image[labels == -1].reshape(-1, 3), axis=0)) == 1  # flat background
        colours = [np.unique(image[labels == k].reshape(-1, 3), axis=0) for k in range(len(inst))]
        assert all(len(c) == 1 for c in colours)  # flat objects: no stripes, no noise
        for a in range(len(colours)):  # colours far apart (rounded from >= 90 in RGB)
            for b in range(a + 1, len(colours)):
                assert np.linalg.norm(colours[a][0].astype(float) - colours[b][0]) >= 0.8 * 90 - 1
    assert cfg.touch_prob == 0.0
    # the default set is unchanged by the control-set options (their defaults draw nothing extra)
    default = SyntheticConfig(size=64)
    a, _ = render_image(default, np.random.default_rng([0, 0, 3]))
    b, _ = render_image(
        SyntheticConfig(size=64, background="textured", square_stripes=True, min_color_distance=0.0),
        np.random.default_rng([0, 0, 3]),
    )
    assert np.array_equal(a, b)
