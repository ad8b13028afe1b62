"""Data loaders: the infinite, seeded, rank-sharded, resumable training loader and the sharded test loader."""

from __future__ import annotations

import logging
import pickle
import random
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..utils import comm
from .catalog import get_dataset_dicts, register_from_config
from .mapper import InferenceDatasetMapper, InstanceDatasetMapper
from .samplers import InferenceSampler, InfiniteBatchSampler, TrainingSampler, augmentation_rng

logger = logging.getLogger(__name__)


def trivial_batch_collator(batch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """A batch is the list of per-image dicts."""
    return batch


def per_process_batch_size(cfg: Any, world_size: Optional[int] = None) -> int:
    """``SOLVER.IMS_PER_BATCH / world_size / SOLVER.GRAD_ACCUM_STEPS`` images per loader batch (micro-batch)."""
    world = comm.get_world_size() if world_size is None else world_size
    total, accum = cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.GRAD_ACCUM_STEPS
    if accum < 1 or total % (world * accum) != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({total}) must be divisible by the number of processes ({world}) times "
            f"SOLVER.GRAD_ACCUM_STEPS ({accum})"
        )
    return total // (world * accum)


def resolve_seed(cfg: Any) -> int:
    """``cfg.SEED`` if ≥ 0, else a random seed chosen by rank 0 and shared with every process (logged)."""
    if cfg.SEED >= 0:
        return int(cfg.SEED)
    seed = comm.all_gather(int(np.random.SeedSequence().entropy % (2**31)))[0]
    logger.info("SEED < 0: the data loader uses the random seed %d", seed)
    return seed


def load_train_dicts(cfg: Any) -> List[Dict[str, Any]]:
    """Dataset dicts of every ``DATASETS.TRAIN`` name; images without instances dropped when
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``."""
    register_from_config(cfg)
    dicts = [d for name in cfg.DATASETS.TRAIN for d in get_dataset_dicts(name)]
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        before = len(dicts)
        dicts = [d for d in dicts if d["annotations"]]
        if len(dicts) < before:
            logger.info(
                "removed %d training image(s) without usable annotations; %d left", before - len(dicts), len(dicts)
            )
    if not dicts:
        raise ValueError(f"no training images with annotations in DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)}")
    return dicts


def build_train_loader(
    cfg: Any, start_iter: int = 0, mapper: Optional[Callable[..., Dict[str, Any]]] = None
) -> DataLoader:
    """Infinite training loader yielding lists of ``per_process_batch_size(cfg)`` mapped dicts.

    Each yielded batch is one micro-batch; an optimizer iteration consumes ``SOLVER.GRAD_ACCUM_STEPS`` of them.
    ``start_iter`` is the optimizer iteration to resume at: the loader then yields exactly the batches an
    uninterrupted run yields from that iteration on (samples and augmentations derive from ``(SEED, stream
    position)``, see :mod:`.samplers`). ``mapper(dataset_dict, rng)`` defaults to
    ``InstanceDatasetMapper.from_config(cfg)``.
    """
    dicts = load_train_dicts(cfg)
    batch = per_process_batch_size(cfg)
    seed = resolve_seed(cfg)
    rank, world = comm.get_rank(), comm.get_world_size()
    start = start_iter * cfg.SOLVER.GRAD_ACCUM_STEPS * batch
    sampler = TrainingSampler(len(dicts), seed, rank=rank, world_size=world, start=start)
    dataset = _TrainDataset(dicts, mapper or InstanceDatasetMapper.from_config(cfg), seed)
    logger.info(
        "train loader: %d images, %d per process and micro-batch, %d process(es), seed %d, start %d",
        len(dicts),
        batch,
        world,
        seed,
        start_iter,
    )
    return DataLoader(
        dataset,
        batch_sampler=InfiniteBatchSampler(sampler, batch),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
        worker_init_fn=_WorkerSeeder(seed, rank),
    )


def build_test_loader(
    cfg: Any, dataset_name: str, mapper: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None
) -> DataLoader:
    """Batch-1 loader over ``dataset_name``; each process reads a contiguous shard of the images."""
    register_from_config(cfg)
    dicts = get_dataset_dicts(dataset_name)
    sampler = InferenceSampler(len(dicts), comm.get_rank(), comm.get_world_size())
    return DataLoader(
        _TestDataset(dicts, mapper or InferenceDatasetMapper.from_config(cfg)),
        sampler=sampler,
        batch_size=1,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
    )


class SerializedList:
    """A list of dicts pickled into one numpy buffer, so forked workers do not copy it on read (detectron2)."""

    def __init__(self, items: Sequence[Any]):
        blobs = [np.frombuffer(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8) for x in items]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> Any:
        begin = int(self._ends[i - 1]) if i > 0 else 0
        return pickle.loads(memoryview(self._buffer[begin : int(self._ends[i])]))


class _TrainDataset(Dataset):
    """``dataset[(index, position)]`` = ``mapper(dicts[index], augmentation_rng(seed, position))``."""

    def __init__(self, dicts: Sequence[Dict[str, Any]], mapper: Callable[..., Dict[str, Any]], seed: int):
        self.dicts, self.mapper, self.seed = SerializedList(dicts), mapper, seed

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, key: Tuple[int, int]) -> Dict[str, Any]:
        index, position = key
        return self.mapper(self.dicts[index], augmentation_rng(self.seed, position))


class _TestDataset(Dataset):
    def __init__(self, dicts: Sequence[Dict[str, Any]], mapper: Callable[[Dict[str, Any]], Dict[str, Any]]):
        self.dicts, self.mapper = SerializedList(dicts), mapper

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.mapper(self.dicts[index])


class _WorkerSeeder:
    """Seeds ``random``, numpy and torch in each worker from ``(seed, rank, worker id)`` (picklable)."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank = seed, rank

    def __call__(self, worker_id: int) -> None:
        s = np.random.SeedSequence([self.seed, self.rank, worker_id]).generate_state(1)[0]
        random.seed(int(s))
        np.random.seed(int(s))
        torch.manual_seed(int(s))
