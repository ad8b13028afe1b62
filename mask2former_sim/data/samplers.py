"""Samplers: a seeded, resumable, rank-sharded infinite training stream, and a sharded inference order.

The training stream is the concatenation of per-epoch permutations of the dataset, epoch ``e`` drawn from
``(seed, e)``. Its global position ``g`` is served by rank ``g mod world`` as that rank's sample
``k = g div world`` (rank ``r`` takes ``r::world``), and the sample's augmentation seed is derived from
``(seed, g)``. So nothing depends on worker processes or on how far a run has got: a run resumed at
iteration ``k`` sees exactly the samples and augmentations of an uninterrupted run, and ``world`` processes
with batch ``b`` see the same images, augmented the same way, as one process with batch ``world · b``.
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

import numpy as np
from torch.utils.data import Sampler

_PERMUTATION_STREAM = 0
_AUGMENTATION_STREAM = 1


def epoch_permutation(size: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch``: a permutation of ``range(size)`` seeded by ``(seed, epoch)``."""
    return np.random.default_rng([seed, _PERMUTATION_STREAM, epoch]).permutation(size)


def augmentation_rng(seed: int, position: int) -> np.random.Generator:
    """The augmentation generator of the sample at global stream position ``position``."""
    return np.random.default_rng([seed, _AUGMENTATION_STREAM, position])


class TrainingSampler(Sampler):
    """Infinite stream of ``(dataset_index, global_position)`` for one rank, starting at its sample ``start``."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        if size <= 0:
            raise ValueError(f"training dataset is empty (size {size}); check DATASETS.TRAIN and the json")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.size, self.seed, self.rank, self.world_size, self.start = size, seed, rank, world_size, start

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        k = self.start
        epoch, perm = -1, np.empty(0, dtype=np.int64)
        while True:
            g = k * self.world_size + self.rank
            if g // self.size != epoch:
                epoch = g // self.size
                perm = epoch_permutation(self.size, self.seed, epoch)
            yield int(perm[g % self.size]), g
            k += 1


class InfiniteBatchSampler(Sampler):
    """Groups an infinite sampler into lists of ``batch_size``."""

    def __init__(self, sampler: TrainingSampler, batch_size: int):
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        batch: List[Tuple[int, int]] = []
        for item in self.sampler:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield batch
                batch = []


class InferenceSampler(Sampler):
    """Each rank takes a contiguous shard of ``range(size)``; shard sizes differ by at most one."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        base, extra = divmod(size, world_size)
        begin = rank * base + min(rank, extra)
        self.indices = range(begin, begin + base + (rank < extra))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
