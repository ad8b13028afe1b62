"""A tiny deterministic model and data stream for the engine tests (no real model or dataset needed).

The model's loss uses random numbers the way Mask2Former's point sampling does, but drawn from a generator
seeded by each sample's global index, so one process with batch 2b and two processes with batch b see the same
numbers; with ``global_rng=True`` it draws from the global torch RNG instead (what resume must restore).
"""

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Set

import numpy as np
import torch
from torch import nn

from mask2former_sim.config import get_cfg
from mask2former_sim.utils import comm

DIM = 6
DATASET_SIZE = 32


def engine_cfg(output_dir: str, **overrides: Any):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = output_dir
    cfg.SEED = 7
    cfg.DATASETS.TEST = ()
    cfg.TEST.EVAL_PERIOD = 0
    cfg.LOG_PERIOD = 2
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.BASE_LR = 1e-2
    cfg.SOLVER.MAX_ITER = 8
    cfg.SOLVER.STEPS = (5,)
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.WARMUP_FACTOR = 0.5
    cfg.SOLVER.CHECKPOINT_PERIOD = 3
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


class FakeModel(nn.Module):
    """``forward(batch, iteration) -> {"loss_fit", "loss_noise"}``; ``nan_at`` iterations make ``loss_noise`` NaN."""

    def __init__(self, global_rng: bool = False, nan_at: Optional[Set[int]] = None) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(DIM, 8), nn.LayerNorm(8))
        self.head = nn.Linear(8, 1)
        self.query_embed = nn.Embedding(3, 8)
        self.global_rng = global_rng
        self.nan_at = set(nan_at or ())
        self.iters_seen: List[Optional[int]] = []

    def forward(self, batch: List[Dict[str, Any]], iteration: Optional[int] = None) -> Dict[str, torch.Tensor]:
        self.iters_seen.append(iteration)
        x = torch.stack([d["x"] for d in batch])
        y = torch.stack([d["y"] for d in batch])
        feats = self.backbone(x) + self.query_embed.weight.mean(0)
        pred = self.head(feats).squeeze(1)
        if self.global_rng:
            noise = torch.rand(len(batch), 4)
        else:
            noise = torch.stack(
                [torch.rand(4, generator=torch.Generator().manual_seed(int(d["index"]))) for d in batch]
            )
        loss_fit = (pred - y).pow(2).mean()
        loss_noise = (pred.unsqueeze(1) * noise).pow(2).mean() * 0.1
        if self.iters_seen and self.iters_seen[-1] in self.nan_at:
            loss_noise = loss_noise * float("nan")
        return {"loss_fit": loss_fit, "loss_noise": loss_noise}


def _dataset(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(DATASET_SIZE, DIM, generator=g)
    y = x.sum(1) * 0.5 + torch.randn(DATASET_SIZE, generator=g) * 0.1
    return x, y


def fake_train_loader(cfg, start_iter: int = 0, calls: Optional[list] = None) -> Iterator[List[Dict[str, Any]]]:
    """Micro-batch ``m`` of the global stream holds samples drawn from ``(SEED, m)``; rank r takes slice r."""
    if calls is not None:
        calls.append(start_iter)
    x, y = _dataset()
    world, rank = comm.get_world_size(), comm.get_rank()
    accum = cfg.SOLVER.GRAD_ACCUM_STEPS
    per_micro = cfg.SOLVER.IMS_PER_BATCH // accum
    per_rank = per_micro // world
    m = start_iter * accum
    while True:
        idx = np.random.default_rng([cfg.SEED, m]).integers(0, DATASET_SIZE, per_micro)
        mine = idx[rank * per_rank : (rank + 1) * per_rank]
        yield [{"x": x[i], "y": y[i], "index": m * 1000 + rank * per_rank + j} for j, i in enumerate(mine)]
        m += 1


# ------------------------------------------------------------------------------------------------------------
# The real tiny model (configs/cpu/tiny-overfit.yaml) on a tiny generated synthetic set
# ------------------------------------------------------------------------------------------------------------
REPO = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))


def make_tiny_dataset(out_dir: str) -> str:
    """A 12-image synthetic COCO set (48 px); returns the ``name:json:image_root`` registration string."""
    from mask2former_sim.data import SyntheticConfig, generate_synthetic_dataset

    out = generate_synthetic_dataset(out_dir, SyntheticConfig(num_train=12, num_val=2, size=48, seed=5))
    return f"engine_tiny_train:{out}/annotations/instances_train.json:{out}/train"


def real_model_cfg(output_dir: str, register: str, **overrides: Any):
    """The tiny CPU model with frozen BN (batch statistics would differ between batch b and 2b) at 32 px."""
    cfg = engine_cfg(output_dir, **overrides)
    cfg.merge_from_file(f"{REPO}/configs/cpu/tiny-overfit.yaml")
    cfg.MODEL.BACKBONE.FREEZE_BN = True
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4  # the synthetic classes
    cfg.DATASETS.REGISTER = [register]
    cfg.DATASETS.TRAIN = ("engine_tiny_train",)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.IMAGE_SIZE = 32
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE = 0.8, 1.2
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


class _SharedPointsTorch:
    """``torch`` for the matcher and point-sampling modules whose ``rand`` gives every row the same points.

    Mask2Former samples random points per image (matcher) and per matched mask (loss) from one stream, so a
    batch split over processes draws different points than one process does; the criterion's ``generator``
    hook makes a run reproducible but cannot make the split identical. Points shared by all rows can.
    """

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def rand(*size, device=None, dtype=None, generator=None, **kwargs):
        size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        row = torch.rand(
            (1,) + tuple(size[1:]), generator=torch.Generator().manual_seed(1234), dtype=dtype or torch.float32
        )
        return row.expand(size).clone().to(device)


@contextlib.contextmanager
def share_point_sampling():
    """Within the block, the real model's point sampling (this process) uses :class:`_SharedPointsTorch`."""
    from mask2former_sim.modeling.losses import mask

    original = mask.torch
    mask.torch = _SharedPointsTorch()
    try:
        yield
    finally:
        mask.torch = original


class StopTraining(Exception):
    """Raised by :func:`train_real_interrupted`'s loader to stop a run as a kill would."""


def train_real_interrupted(cfg, stop_at: Optional[int] = None, resume: bool = False):
    """Train ``cfg`` with the real loader; with ``stop_at`` the run stops (``StopTraining``) when the batch of
    iteration ``stop_at`` is requested, after whatever checkpoints came before. Returns the trainer."""
    import pytest

    from mask2former_sim.engine import Trainer, seed_all_rng

    loader = Trainer.build_train_loader
    if stop_at is not None:

        def loader(cfg, start_iter):
            for n, batch in enumerate(Trainer.build_train_loader(cfg, start_iter)):
                if start_iter + n >= stop_at:
                    raise StopTraining
                yield batch

    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg, train_loader_fn=loader)
    trainer.resume_or_load(resume=resume)
    if stop_at is None:
        trainer.train()
    else:
        with pytest.raises(StopTraining):
            trainer.train()
    return trainer
