"""Training hooks (detectron2's ``HookBase``): what runs around the optimizer steps without being part of them.

A supervision mode adds its own hooks (``model.supervision.hooks(model)``, e.g. SIM's EMA teacher step). The
trainer calls every hook, in the order of :meth:`~.trainer.Trainer.build_hooks`, at ``before_train``, then
around every iteration ``before_step`` / ``after_step``, and at ``after_train``. A hook reads the trainer's state:
``trainer.iter`` (the iteration just run), ``trainer.max_iter``, ``trainer.step_taken`` (False when a non-finite
loss skipped the optimizer step), ``trainer.last_losses``, ``trainer.last_lr``, ``trainer.last_step_time``,
``trainer.last_data_time``, ``trainer.model``, ``trainer.checkpointer``, ``trainer.progress``.

- :class:`MetricsWriter` — progress lines with ETA, ``metrics.json`` and TensorBoard: the loss terms and the model's
  other scalars of the step (``training_statistics``: the matched masks' box fit, SIM's teacher statistics).
- :class:`PeriodicCheckpointer` — ``model_{iter}.pth`` every ``SOLVER.CHECKPOINT_PERIOD``, ``model_final.pth`` at
  the end.
- :class:`EvalHook` — evaluation every ``TEST.EVAL_PERIOD`` and at the end (``metrics_final.json``).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional

from ..utils import comm
from .checkpoint import unwrap_model

__all__ = ["HookBase", "MetricsWriter", "PeriodicCheckpointer", "EvalHook"]

logger = logging.getLogger(__name__)


class HookBase:
    """A hook: every method is a no-op unless overridden. ``trainer`` is set when the hook is registered."""

    trainer: Any = None

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class MetricsWriter(HookBase):
    """Every iteration: the loss terms, learning rate and timings to the trainer's :class:`~.events.TrainingProgress`
    (which logs and writes them every ``LOG_PERIOD``); on the iterations that log, the model's
    ``training_statistics()`` too. The supervision measures them only then (``set_statistics_due``): each one
    waits for the device."""

    def before_step(self) -> None:
        supervision = getattr(unwrap_model(self.trainer.model), "supervision", None)
        if supervision is not None:
            supervision.set_statistics_due(self.trainer.progress.logs_after(self.trainer.iter))

    def after_step(self) -> None:
        trainer = self.trainer
        statistics = getattr(unwrap_model(trainer.model), "training_statistics", dict)()
        trainer.progress.update(
            trainer.iter,
            trainer.last_losses,
            trainer.last_lr,
            trainer.last_step_time,
            trainer.last_data_time,
            statistics,
        )

    def after_train(self) -> None:
        self.trainer.progress.close()


class PeriodicCheckpointer(HookBase):
    """``model_{iter:07d}.pth`` after every ``period`` iterations (not after the last), ``model_final.pth`` after
    training (``period`` ≤ 0: the final one only)."""

    def __init__(self, period: int) -> None:
        self.period = int(period)

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if done < self.trainer.max_iter and self.period > 0 and done % self.period == 0:
            self.trainer.checkpointer.save(f"model_{self.trainer.iter:07d}", self.trainer.iter)

    def after_train(self) -> None:
        self.trainer.checkpointer.save("model_final", self.trainer.max_iter - 1)


class EvalHook(HookBase):
    """Evaluate on ``DATASETS.TEST`` after every ``period`` iterations (not after the last; ``period`` ≤ 0: never)
    and once after training; the final results go to ``trainer.final_results`` and ``metrics_final.json``."""

    def __init__(self, period: int, output_dir: Optional[str]) -> None:
        self.period = int(period)
        self.output_dir = output_dir

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if done < self.trainer.max_iter and self.period > 0 and done % self.period == 0:
            self.trainer.evaluate(self.trainer.iter)
            self.trainer.model.train()

    def after_train(self) -> None:
        iteration = self.trainer.max_iter - 1
        results: Dict[str, Any] = self.trainer.evaluate(iteration)
        self.trainer.final_results = results
        if comm.is_main_process() and self.output_dir:
            path = os.path.join(self.output_dir, "metrics_final.json")
            with open(path, "w") as f:
                json.dump({"iteration": iteration, "results": results}, f, indent=2)
            logger.info("final metrics written to %s", path)
