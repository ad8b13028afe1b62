"""Loaders: rank sharding, resumability at iteration k, batch-size rules, world-size invariance, test shards."""

import numpy as np
import pytest
import torch

from mask2former_sim.config import get_cfg
from mask2former_sim.data import build as build_mod
from mask2former_sim.data.build import build_test_loader, build_train_loader, per_process_batch_size
from mask2former_sim.data.catalog import register_coco_instances, remove_dataset
from mask2former_sim.data.samplers import InferenceSampler, TrainingSampler, epoch_permutation
from mask2former_sim.data.synthetic import SyntheticConfig, generate_synthetic_dataset


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    out = generate_synthetic_dataset(
        str(tmp_path_factory.mktemp("syn") / "tiny"), SyntheticConfig(num_train=10, num_val=5, size=48, seed=3)
    )
    register_coco_instances("test_loader_train", f"{out}/annotations/instances_train.json", f"{out}/train")
    register_coco_instances("test_loader_val", f"{out}/annotations/instances_val.json", f"{out}/val")
    yield out
    remove_dataset("test_loader_train")
    remove_dataset("test_loader_val")


def _cfg(workers=0, batch=4, accum=1, supervision="mask"):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("test_loader_train",)
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.SOLVER.GRAD_ACCUM_STEPS = accum
    cfg.SEED = 11
    cfg.INPUT.IMAGE_SIZE = 32
    cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE = 0.5, 1.5
    cfg.MODEL.MASK_FORMER.SUPERVISION = supervision
    return cfg


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _same_batches(a, b):
    assert len(a) == len(b)
    for ba, bb in zip(a, b):
        assert [x["image_id"] for x in ba] == [x["image_id"] for x in bb]
        for xa, xb in zip(ba, bb):
            assert torch.equal(xa["image"], xb["image"]) and torch.equal(xa["padding_mask"], xb["padding_mask"])
            for k in xa["instances"]:
                assert torch.equal(xa["instances"][k], xb["instances"][k])


def test_sampler_shards_two_ranks_without_overlap():
    size, seed = 12, 4
    taken, positions = [], []
    for rank in range(2):
        items = [item for item, _ in zip(TrainingSampler(size, seed, rank=rank, world_size=2), range(size // 2))]
        taken.append([i for i, _ in items])
        positions.append([g for _, g in items])
    assert positions == [list(range(0, size, 2)), list(range(1, size, 2))]
    assert not set(taken[0]) & set(taken[1]) and sorted(taken[0] + taken[1]) == list(range(size))
    perm = epoch_permutation(size, seed, 0)
    assert taken[0] == list(perm[0::2]) and taken[1] == list(perm[1::2])
    one = [i for (i, _), _ in zip(TrainingSampler(size, seed), range(2 * size))]
    assert sorted(one[size:]) == list(range(size)) and one[:size] != one[size:]
    resumed = [item for item, _ in zip(TrainingSampler(size, seed, start=5), range(size))]
    assert resumed == [item for item, _ in zip(TrainingSampler(size, seed), range(5 + size))][5:]


def test_inference_sampler_covers_once():
    shards = [list(InferenceSampler(11, r, 3)) for r in range(3)]
    assert sum(shards, []) == list(range(11)) and [len(s) for s in shards] == [4, 4, 3]


def test_batch_size_rules():
    assert per_process_batch_size(_cfg(batch=16, accum=2), world_size=4) == 2
    with pytest.raises(ValueError, match="IMS_PER_BATCH"):
        per_process_batch_size(_cfg(batch=6, accum=4), world_size=1)


def test_resume_at_k_equals_uninterrupted(tiny_set):
    cfg = _cfg(batch=2, accum=2)
    full = _take(build_train_loader(cfg), 14)  # 7 optimizer iterations × 2 micro-batches, > 2 epochs
    resumed = _take(build_train_loader(cfg, start_iter=3), 8)
    _same_batches(full[6:], resumed)
    assert "gt_masks" in full[0][0]["instances"]


def test_workers_do_not_change_batches(tiny_set):
    cfg0, cfg2 = _cfg(workers=0, batch=2, supervision="box"), _cfg(workers=2, batch=2, supervision="box")
    _same_batches(_take(build_train_loader(cfg0), 4), _take(build_train_loader(cfg2, start_iter=0), 4))


def test_two_ranks_see_the_one_process_batch(tiny_set, monkeypatch):
    single = _take(build_train_loader(_cfg(batch=4)), 3)
    per_rank = []
    for rank in range(2):
        monkeypatch.setattr(build_mod.comm, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(build_mod.comm, "get_world_size", lambda: 2)
        per_rank.append(_take(build_train_loader(_cfg(batch=4)), 3))
    for it in range(3):
        merged = [x for pair in zip(per_rank[0][it], per_rank[1][it]) for x in pair]
        _same_batches([single[it]], [merged])


def test_filter_empty_annotations(tiny_set, monkeypatch):
    real = build_mod.get_dataset_dicts

    def with_empty(name):
        dicts = real(name)
        dicts[0] = dict(dicts[0], annotations=[])
        return dicts

    monkeypatch.setattr(build_mod, "get_dataset_dicts", with_empty)
    cfg = _cfg()
    assert len(build_mod.load_train_dicts(cfg)) == 9
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    assert len(build_mod.load_train_dicts(cfg)) == 10


def test_test_loader_shards_and_output(tiny_set, monkeypatch):
    cfg = _cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 200
    batches = list(build_test_loader(cfg, "test_loader_val"))
    assert [len(b) for b in batches] == [1] * 5
    x = batches[0][0]
    assert x["image"].shape == (3, 96, 96) and x["image"].dtype == torch.uint8
    assert (x["height"], x["width"]) == (48, 48) and set(x) == {"image", "height", "width", "image_id", "file_name"}
    ids = []
    for rank in range(2):
        monkeypatch.setattr(build_mod.comm, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(build_mod.comm, "get_world_size", lambda: 2)
        ids.append([b[0]["image_id"] for b in build_test_loader(cfg, "test_loader_val")])
    assert ids[0] + ids[1] == [b[0]["image_id"] for b in batches] and len(ids[0]) == 3


def test_train_output_format(tiny_set):
    batch = _take(build_train_loader(_cfg(batch=2)), 1)[0]
    x = batch[0]
    assert x["image"].dtype == torch.uint8 and x["image"].shape == (3, 32, 32)
    assert x["padding_mask"].dtype == torch.bool and x["padding_mask"].shape == (32, 32)
    inst = x["instances"]
    assert inst["gt_boxes"].dtype == torch.float32 and inst["gt_classes"].dtype == torch.int64
    assert inst["gt_masks"].dtype == torch.bool and inst["gt_masks"].shape[1:] == (32, 32)
    assert np.isfinite(inst["gt_boxes"].numpy()).all()
