"""Process setup for training and evaluation: output folder, logging, saved config, seeds.

Only the main process logs to the console and to ``OUTPUT_DIR/log.txt``; the other processes log warnings
and errors to the console (prefixed with their rank), so a failure on any rank is visible.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from typing import Any, Optional

import numpy as np
import torch

from ..utils import comm
from ..utils.memory import retain_freed_memory

__all__ = ["setup_logger", "default_setup", "seed_all_rng", "resolve_seed"]

logger = logging.getLogger(__name__)

_LOG_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"


def setup_logger(
    output_dir: Optional[str] = None, rank: Optional[int] = None, name: str = "mask2former_sim"
) -> logging.Logger:
    """Console handler (INFO on rank 0, WARNING elsewhere) and, on rank 0, ``output_dir/log.txt``.

    Idempotent: handlers installed by an earlier call are replaced.
    """
    rank = comm.get_rank() if rank is None else rank
    root = logging.getLogger(name)
    root.setLevel(logging.DEBUG)
    root.propagate = False
    for handler in list(root.handlers):
        if getattr(handler, "_m2f_sim", False):
            root.removeHandler(handler)
            handler.close()
    fmt = _LOG_FORMAT if rank == 0 else f"[rank {rank}] " + _LOG_FORMAT
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(logging.Formatter(fmt, datefmt="%m/%d %H:%M:%S"))
    console._m2f_sim = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if output_dir and rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, "log.txt"))
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%m/%d %H:%M:%S"))
        file_handler._m2f_sim = True  # type: ignore[attr-defined]
        root.addHandler(file_handler)
    return root


def resolve_seed(seed: int) -> int:
    """``seed`` if it is >= 0, otherwise a fresh random seed from the OS."""
    if seed >= 0:
        return int(seed)
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def seed_all_rng(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_setup(cfg: Any, args: Any = None) -> int:
    """Create ``OUTPUT_DIR``, set up logging, save ``config.yaml``, seed every RNG, keep freed memory for reuse
    (:func:`~mask2former_sim.utils.memory.retain_freed_memory`); returns the base seed.

    ``cfg.SEED < 0`` draws a random seed (logged) that is shared by all processes; each process is seeded with
    ``seed + rank``. The resolved seed is written back into ``cfg.SEED`` (and thus into ``config.yaml`` and
    checkpoints) so a run can be repeated. ``cfg`` must be mutable when ``SEED < 0``.
    """
    rank = comm.get_rank()
    retain_freed_memory()
    output_dir = cfg.OUTPUT_DIR
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, rank)
    logger.info("rank %d of %d processes", rank, comm.get_world_size())
    if args is not None:
        logger.info("command-line arguments: %s", args)
    seed = resolve_seed(cfg.SEED)
    if cfg.SEED < 0:
        seed = comm.all_gather(seed)[0]
        logger.info("SEED < 0: using the random seed %d", seed)
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.SEED = seed
        if was_frozen:
            cfg.freeze()
    seed_all_rng(seed + rank)
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        with open(path, "w") as f:
            f.write(cfg.dump())
        logger.info("full config saved to %s", path)
    if hasattr(cfg, "CUDNN_BENCHMARK"):
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
    return seed
