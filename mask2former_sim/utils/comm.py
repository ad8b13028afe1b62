"""Helpers around ``torch.distributed`` that also work in a single process."""

from __future__ import annotations

from typing import Any, List

import torch
import torch.distributed as dist


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes (no-op in a single process)."""
    if get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all processes (returns a new tensor; the input is left alone)."""
    tensor = tensor.clone()
    if get_world_size() > 1:
        dist.all_reduce(tensor)
        tensor /= get_world_size()
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all processes (returns a new tensor)."""
    tensor = tensor.clone()
    if get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def all_gather(obj: Any) -> List[Any]:
    """Gather a picklable object from every process; a list with one entry per rank."""
    if get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
