"""Command-line flags and multi-process launch (detectron2 conventions) over ``torch.distributed``.

Three ways to run ``main_func``:

* one process (``--num-gpus 1`` or ``0``, one machine): called directly, no process group;
* ``--num-gpus N`` (and ``--num-machines M --machine-rank R --dist-url tcp://host:port``): N processes per
  machine are spawned with ``torch.multiprocessing``; global rank ``R * N + local_rank``, world ``N * M``;
* under ``torchrun`` (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in the environment): the process group is
  initialised from the environment (``init_method="env://"``) and ``main_func`` runs in this process.

Backend: NCCL when CUDA has at least ``num_gpus_per_machine`` devices, otherwise gloo. So ``--num-gpus 2`` on a
CPU-only machine spawns 2 gloo processes that train on the CPU: the same code path as multi-GPU training, which
the tests use.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..utils import comm

__all__ = ["launch", "default_argument_parser", "find_free_port", "choose_backend"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """detectron2's flags: ``--config-file --resume --eval-only --num-gpus --num-machines --machine-rank
    --dist-url`` and trailing ``KEY VALUE`` config overrides."""
    parser = argparse.ArgumentParser(
        epilog=epilog
        or (
            "Examples:\n"
            "  python train_net.py --config-file configs/cpu/m2f_synthetic_tiny.yaml\n"
            "  python train_net.py --config-file cfg.yaml --num-gpus 8 SOLVER.IMS_PER_BATCH 16\n"
            "  python train_net.py --config-file cfg.yaml --eval-only MODEL.WEIGHTS output/model_final.pth\n"
            "  python train_net.py --config-file cfg.yaml --resume\n"
            "Multi-node (machine 0 of 2): --num-gpus 8 --num-machines 2 --machine-rank 0 --dist-url tcp://IP:PORT\n"
            "torchrun --nproc_per_node 8 train_net.py --config-file cfg.yaml  (ranks come from the environment)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to a YAML config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint named in OUTPUT_DIR/last_checkpoint (model, optimizer, schedule, "
        "scaler, iteration, RNG); without it, start at iteration 0 from MODEL.WEIGHTS",
    )
    parser.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS on DATASETS.TEST")
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="processes per machine (one per GPU); on a machine without enough GPUs, N CPU processes with gloo",
    )
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (0 .. num-machines - 1)")
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="init method of torch.distributed: tcp://IP:PORT of machine 0 (needed with --num-machines > 1), or "
        "'auto' (default) for a free port on 127.0.0.1",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. SOLVER.MAX_ITER 1000 OUTPUT_DIR out/run1",
    )
    return parser


def choose_backend(num_gpus_per_machine: int) -> str:
    """``"nccl"`` when CUDA has enough devices for one process per GPU, otherwise ``"gloo"``."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= max(num_gpus_per_machine, 1):
        return "nccl"
    return "gloo"


def _launched_by_torchrun() -> bool:
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = "auto",
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in one process or in ``num_gpus_per_machine * num_machines`` processes.

    ``main_func`` must be picklable (a module-level function) when processes are spawned.
    """
    if _launched_by_torchrun() and not comm.is_dist_avail_and_initialized():
        _run_from_env(main_func, args, timeout)
        return
    procs = max(num_gpus_per_machine, 1)
    world_size = procs * num_machines
    if world_size == 1:
        main_func(*args)
        return
    if dist_url in (None, "", "auto"):
        if num_machines != 1:
            raise ValueError(
                f"--dist-url auto only works on one machine; with --num-machines {num_machines} pass "
                "--dist-url tcp://<IP of machine 0>:<port>"
            )
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// init across machines needs a shared file system: %s", dist_url)
    backend = choose_backend(procs)
    logger.info(
        "launching %d processes on this machine (world size %d, backend %s, %s)", procs, world_size, backend, dist_url
    )
    mp.start_processes(
        _distributed_worker,
        nprocs=procs,
        args=(main_func, world_size, procs, machine_rank, dist_url, tuple(args), backend, timeout),
        daemon=False,
        start_method="spawn",
    )


def _run_from_env(main_func: Callable[..., Any], args: Sequence[Any], timeout: timedelta) -> None:
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    backend = choose_backend(local_world)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    logger.info(
        "torchrun process: rank %d of %d (local rank %d, backend %s)",
        dist.get_rank(),
        dist.get_world_size(),
        local_rank,
        backend,
    )
    try:
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Sequence[Any],
    backend: str,
    timeout: timedelta,
) -> None:
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    os.environ["LOCAL_RANK"] = str(local_rank)
    os.environ["LOCAL_WORLD_SIZE"] = str(num_gpus_per_machine)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(
            backend=backend, init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout
        )
    except Exception as exc:
        raise RuntimeError(
            f"process {global_rank} of {world_size}: cannot initialise torch.distributed ({backend}) at {dist_url}: "
            f"{exc}"
        ) from exc
    try:
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()
