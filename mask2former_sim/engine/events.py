"""Training progress: smoothed per-term losses, ETA, progress lines and ``metrics.json`` records.

One :class:`TrainingProgress` lives in the trainer. Every iteration it receives the (already all-reduced) loss
terms, the learning rate and timings; every ``LOG_PERIOD`` iterations the main process logs one line

    iter 120/5000  eta 0:41:10  loss 3.412 (loss_ce 0.81 loss_dice 1.20 ...)  lr 1.00e-04  time 0.512 s/it  data 0.010 s

and appends one JSON object per line to ``OUTPUT_DIR/metrics.json`` (detectron2's format: ``iteration``,
``total_loss``, each term, ``lr``, ``time``, ``data_time``, ``eta_seconds``). Evaluation results are appended
to the same file as flat ``"segm/AP"``-style keys. With ``tensorboard`` the same scalars also go to TensorBoard
event files in the same folder (detectron2's convention; ``LOGGER.TENSORBOARD``).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import statistics
from collections import deque
from typing import Any, Deque, Dict, Mapping, Optional

from torch.utils.tensorboard import SummaryWriter

from ..utils import comm

__all__ = ["SmoothedValue", "TrainingProgress", "flatten_results", "JSONLinesWriter", "TensorBoardWriter"]

logger = logging.getLogger(__name__)


class SmoothedValue:
    """Recent values of one scalar: median over a window, and the global average."""

    def __init__(self, window: int = 20) -> None:
        self.values: Deque[float] = deque(maxlen=max(window, 1))
        self.total = 0.0
        self.count = 0

    def update(self, value: float) -> None:
        self.values.append(float(value))
        self.total += float(value)
        self.count += 1

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    @property
    def avg(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan


class JSONLinesWriter:
    """Appends one JSON object per line to a file (main process only)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, record: Mapping[str, Any]) -> None:
        if not comm.is_main_process():
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(record), sort_keys=False) + "\n")


class TensorBoardWriter:
    """Writes every numeric field of a record (but ``iteration``) as a TensorBoard scalar at its iteration.

    Main process only; the event file is opened at the first record (``torch.utils.tensorboard``).
    """

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self._writer = None

    def write(self, record: Mapping[str, Any]) -> None:
        if not comm.is_main_process():
            return
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=self.log_dir)
        step = int(record["iteration"])
        for key, value in record.items():
            if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, float(value), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def flatten_results(results: Mapping[str, Any], prefix: str = "") -> Dict[str, float]:
    """``{"segm": {"AP": 1.0}}`` → ``{"segm/AP": 1.0}`` (numbers only)."""
    flat: Dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_results(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(seconds)))


class TrainingProgress:
    """Accumulates per-iteration scalars; writes progress lines and ``metrics.json`` every ``log_period``."""

    def __init__(
        self, max_iter: int, output_dir: str, log_period: int = 20, start_iter: int = 0, tensorboard: bool = False
    ) -> None:
        self.max_iter = max_iter
        self.log_period = max(int(log_period), 1)
        self.start_iter = start_iter
        self.losses: Dict[str, SmoothedValue] = {}
        self.statistics: Dict[str, SmoothedValue] = {}
        self.total_loss = SmoothedValue(self.log_period)
        self.iter_time = SmoothedValue(self.log_period)
        self.data_time = SmoothedValue(self.log_period)
        self.lr = math.nan
        self.writer = JSONLinesWriter(os.path.join(output_dir, "metrics.json"))
        self.tensorboard = TensorBoardWriter(output_dir) if tensorboard and output_dir else None

    def update(
        self,
        iteration: int,
        losses: Mapping[str, float],
        lr: float,
        iter_time: float,
        data_time: float,
        scalars: Optional[Mapping[str, float]] = None,
    ) -> None:
        """Record iteration ``iteration`` (0-based) and log when it ends a log period or the run.

        ``scalars`` are the model's other scalars of the step (e.g. the matched masks' box fit), measured on the
        iterations that log (:meth:`logs_after`); like the losses they are written as medians of what the log
        period recorded (NaN values are skipped).
        """
        for key, value in losses.items():
            self.losses.setdefault(key, SmoothedValue(self.log_period)).update(value)
        for key, value in (scalars or {}).items():
            if math.isfinite(value):
                self.statistics.setdefault(key, SmoothedValue(self.log_period)).update(value)
        if losses:
            self.total_loss.update(sum(losses.values()))
        self.iter_time.update(iter_time)
        self.data_time.update(data_time)
        self.lr = lr
        if self.logs_after(iteration):
            self.log(iteration)

    def logs_after(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (0-based) ends a log period or the run (a progress line is written)."""
        done = iteration + 1
        return done % self.log_period == 0 or done == self.max_iter

    def eta_seconds(self, iteration: int) -> float:
        return self.iter_time.avg * (self.max_iter - iteration - 1)

    def log(self, iteration: int) -> None:
        if not comm.is_main_process():
            return
        eta = self.eta_seconds(iteration)
        terms = "  ".join(f"{k} {v.median:.4g}" for k, v in self.losses.items())
        logger.info(
            "iter %d/%d  eta %s  loss %.4g (%s)  lr %.3e  time %.3f s/it  data %.3f s",
            iteration + 1,
            self.max_iter,
            _format_eta(eta),
            self.total_loss.median,
            terms,
            self.lr,
            self.iter_time.avg,
            self.data_time.avg,
        )
        if self.statistics:
            logger.info(
                "iter %d/%d  %s",
                iteration + 1,
                self.max_iter,
                "  ".join(f"{k} {v.median:.4g}" for k, v in self.statistics.items()),
            )
        record: Dict[str, Any] = {"iteration": iteration, "total_loss": self.total_loss.median}
        record.update({k: v.median for k, v in self.losses.items()})
        record.update({k: v.median for k, v in self.statistics.items()})
        record.update({"lr": self.lr, "time": self.iter_time.avg, "data_time": self.data_time.avg, "eta_seconds": eta})
        self._write(_finite_or_none(record))

    def write_results(self, iteration: int, results: Mapping[str, Any], extra: Optional[Dict] = None) -> None:
        """Append evaluation results (flattened) for ``iteration`` to ``metrics.json``."""
        record: Dict[str, Any] = {"iteration": iteration}
        record.update(flatten_results(results))
        record.update(extra or {})
        self._write(_finite_or_none(record))

    def _write(self, record: Dict[str, Any]) -> None:
        self.writer.write(record)
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def close(self) -> None:
        """Flush and close the TensorBoard event file (metrics.json is appended line by line)."""
        if self.tensorboard is not None:
            self.tensorboard.close()


def _finite_or_none(record: Mapping[str, Any]) -> Dict[str, Any]:
    """JSON has no NaN/inf: non-finite floats become ``null``."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
