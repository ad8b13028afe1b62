"""Run a model over a test loader with an evaluator, and format result dicts as text tables."""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch

from ..utils import comm

logger = logging.getLogger(__name__)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A pipe-separated text table with aligned columns (every cell rendered with ``str``)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(len(headers))]

    def line(row: List[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), separator] + [line(r) for r in cells[1:]])


def format_results_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """One row per task with its summary metrics (AP, AP50, ...; per-category "AP-*" entries left out)."""
    tables = []
    for task, metrics in results.items():
        keys = [k for k in metrics if not k.startswith("AP-")]
        tables.append(f"{task}:\n" + format_table([[f"{metrics[k]:.3f}" for k in keys]], keys))
    return "\n".join(tables)


def print_csv_format(results: Mapping[str, Mapping[str, float]]) -> None:
    """Log the summary metrics in detectron2's copy-paste CSV form (``copypaste: AP,AP50,...``)."""
    for task, metrics in results.items():
        keys = [k for k in metrics if not k.startswith("AP-")]
        logger.info("copypaste: Task: %s", task)
        logger.info("copypaste: %s", ",".join(keys))
        logger.info("copypaste: %s", ",".join(f"{metrics[k]:.4f}" for k in keys))


def inference_on_dataset(
    model: torch.nn.Module, data_loader: Iterable[List[Dict[str, Any]]], evaluator: Any, log_period: int = 20
) -> Dict[str, Any]:
    """Run ``model`` in eval mode without gradients on every batch and feed ``evaluator``.

    Args:
        model: takes a list of input dicts, returns ``[{"instances": {...}}]``.
        data_loader: yields lists of input dicts (this process's shard).
        evaluator: has ``reset()``, ``process(inputs, outputs)``, ``evaluate()``.
        log_period: log progress with an ETA every this many batches.
    Returns:
        ``evaluator.evaluate()`` (an empty dict on non-main processes).
    """
    try:
        total: Optional[int] = len(data_loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    logger.info(
        "Start inference on %s batches (rank %d of %d).",
        total if total is not None else "?",
        comm.get_rank(),
        comm.get_world_size(),
    )
    evaluator.reset()
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    compute_time = 0.0
    count = 0
    try:
        with torch.no_grad():
            for inputs in data_loader:
                t0 = time.perf_counter()
                outputs = model(inputs)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                compute_time += time.perf_counter() - t0
                evaluator.process(inputs, outputs)
                count += 1
                if count % log_period == 0 or count == total:
                    elapsed = time.perf_counter() - start
                    per_batch = elapsed / count
                    eta = "?" if total is None else str(datetime.timedelta(seconds=int(per_batch * (total - count))))
                    logger.info(
                        "Inference done %d/%s. %.4f s/batch (model %.4f s/batch). ETA=%s",
                        count,
                        total if total is not None else "?",
                        per_batch,
                        compute_time / count,
                        eta,
                    )
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    logger.info("Total inference time: %s for %d batches.", datetime.timedelta(seconds=int(elapsed)), count)
    results = evaluator.evaluate()
    return results if results is not None else {}
