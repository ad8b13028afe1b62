"""The training loop: gradient accumulation, AMP, clipping, non-finite loss handling; hooks around the steps.

One iteration (``run_step``) is one optimizer step over ``SOLVER.GRAD_ACCUM_STEPS`` micro-batches (DDP gradient
sync only on the last). The loss terms are all-reduced across processes; if any term is non-finite on any
process, the step is skipped on all of them (gradients dropped, schedule still advances) and a warning names
the terms; ``SOLVER.MAX_CONSECUTIVE_NONFINITE`` skips in a row stop training with ``FloatingPointError``.
Everything else runs in hooks (:mod:`.hooks`, detectron2's design): the SIM teacher's EMA step, metrics,
checkpoints and evaluation.

Iterations are 0-based: a checkpoint saved after iteration ``i`` stores ``iteration = i`` and training resumes
at ``i + 1`` with ``build_train_loader(cfg, start_iter=i + 1)`` (``start_iter`` counts optimizer steps already
done). Building the loader, fetching batches and evaluating run inside :func:`preserved_rng`, so the global RNG
stream the model sees depends only on the seed and the iteration: a resumed run reproduces an uninterrupted one.
The loader must therefore draw its own randomness from its own generators (ours derive them from ``SEED`` and
the stream position), not from the global RNG.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections import Counter
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data import build_test_loader, build_train_loader, get_metadata
from ..evaluation import COCOEvaluator, format_results_table, inference_on_dataset, print_csv_format
from ..modeling import build_model
from ..utils import comm
from ..utils.profiling import stage
from .checkpoint import Checkpointer, unwrap_model
from .events import TrainingProgress
from .hooks import EvalHook, HookBase, MetricsWriter, PeriodicCheckpointer
from .lr_scheduler import build_lr_scheduler
from .optimizer import build_optimizer, clip_gradients

__all__ = ["Trainer", "preserved_rng"]

logger = logging.getLogger(__name__)

TrainLoaderFn = Callable[[Any, int], Iterable[List[Dict[str, Any]]]]


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without changing the Python, NumPy, torch and CUDA global RNG states seen afterwards."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)


class Trainer:
    """Train ``cfg``'s model (or an injected one) with Mask2Former's recipe.

    Args:
        cfg: full config (``SOLVER``, ``TEST``, ``OUTPUT_DIR``, ``MODEL.DEVICE``, ``LOG_PERIOD`` ...).
        model: a model to train instead of ``build_model(cfg)``. The trainer relies on its train-mode
            ``forward(batch, iteration=i)`` (a list of dicts and the training iteration → a dict of scalar losses,
            already weighted); the hooks of its ``supervision`` (``supervision.hooks(model)``, SIM's EMA teacher)
            are registered, and ``training_statistics()``, if the model has it, is logged.
        train_loader_fn: ``fn(cfg, start_iter) -> iterable of batches`` instead of :meth:`build_train_loader`.
        extra_state: named objects with ``state_dict``/``load_state_dict`` stored in checkpoints beside the model
            (state outside the model's own ``state_dict``).
    """

    find_unused_parameters = False

    def __init__(
        self,
        cfg: Any,
        model: Optional[nn.Module] = None,
        train_loader_fn: Optional[TrainLoaderFn] = None,
        extra_state: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(cfg.MODEL.DEVICE)
        if model is None:
            model = self.build_model(cfg)
        model.to(self.device)
        self._train_loader_fn = train_loader_fn or type(self).build_train_loader
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.amp = bool(cfg.SOLVER.AMP.ENABLED) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.model = self._wrap_ddp(model)
        self.checkpointer = Checkpointer(
            self.model, cfg.OUTPUT_DIR, self.optimizer, self.scheduler, self.scaler, extra=extra_state, cfg=cfg
        )
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self.accum_steps = int(cfg.SOLVER.GRAD_ACCUM_STEPS)
        if self.accum_steps < 1:
            raise ValueError(f"SOLVER.GRAD_ACCUM_STEPS must be >= 1, got {self.accum_steps}")
        self.start_iter = 0
        self.iter = 0
        self.nonfinite_in_a_row = 0
        self._nonfinite_terms: Counter = Counter()
        self._data_iter: Optional[Iterator[List[Dict[str, Any]]]] = None
        self.progress: Optional[TrainingProgress] = None
        # the last step, for the hooks
        self.step_taken = False
        self.last_losses: Dict[str, float] = {}
        self.last_lr = math.nan
        self.last_step_time = 0.0
        self.last_data_time = 0.0
        self.final_results: Dict[str, Any] = {}
        self.hooks: List[HookBase] = []
        self.register_hooks(self.build_hooks())
        logger.info(
            "trainer: device %s, %d process(es), AMP %s, %d micro-batch(es) per step",
            self.device,
            comm.get_world_size(),
            "on" if self.amp else "off",
            self.accum_steps,
        )

    # ----------------------------------------------------------------------------------------------- builders
    @classmethod
    def build_model(cls, cfg: Any, training: bool = True) -> nn.Module:
        return build_model(cfg, training=training)

    @classmethod
    def build_train_loader(cls, cfg: Any, start_iter: int = 0) -> Iterable[List[Dict[str, Any]]]:
        return build_train_loader(cfg, start_iter=start_iter)

    @classmethod
    def build_test_loader(cls, cfg: Any, dataset_name: str) -> Iterable[List[Dict[str, Any]]]:
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg: Any, dataset_name: str) -> Any:
        meta = get_metadata(dataset_name)
        return COCOEvaluator(
            meta["json_file"],
            max_dets=list(cfg.TEST.MAX_DETS),
            output_dir=os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name),
            dataset_id_map=meta.get("thing_dataset_id_to_contiguous_id"),
        )

    def build_hooks(self) -> List[HookBase]:
        """The hooks, in calling order: the supervision mode's (SIM's EMA teacher), metrics, checkpoints, evaluation."""
        model = unwrap_model(self.model)
        supervision = getattr(model, "supervision", None)
        hooks: List[HookBase] = list(supervision.hooks(model)) if supervision is not None else []
        hooks += [
            MetricsWriter(),
            PeriodicCheckpointer(self.cfg.SOLVER.CHECKPOINT_PERIOD),
            EvalHook(self.cfg.TEST.EVAL_PERIOD, self.cfg.OUTPUT_DIR),
        ]
        return hooks

    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        if comm.get_world_size() == 1:
            return model
        device_ids = None
        if self.device.type == "cuda":
            device_ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        return DistributedDataParallel(
            model,
            device_ids=device_ids,
            broadcast_buffers=False,
            find_unused_parameters=self.find_unused_parameters,
        )

    # ------------------------------------------------------------------------------------------------ running
    def resume_or_load(self, resume: bool = True) -> int:
        """Resume from ``OUTPUT_DIR/last_checkpoint`` (``resume``) or load ``MODEL.WEIGHTS``; sets start_iter."""
        self.start_iter = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        return self.start_iter

    def train(self) -> Dict[str, Any]:
        """Train from ``start_iter`` to ``SOLVER.MAX_ITER``; returns the final evaluation results."""
        cfg = self.cfg
        logger.info("starting training at iteration %d of %d", self.start_iter, self.max_iter)
        with preserved_rng():
            self._data_iter = iter(self._train_loader_fn(cfg, self.start_iter))
        self.progress = TrainingProgress(
            self.max_iter, cfg.OUTPUT_DIR, cfg.LOG_PERIOD, self.start_iter, tensorboard=cfg.LOGGER.TENSORBOARD
        )
        self.model.train()
        try:
            for hook in self.hooks:
                hook.before_train()
            for self.iter in range(self.start_iter, self.max_iter):
                for hook in self.hooks:
                    hook.before_step()
                self.run_step()
                for hook in self.hooks:
                    hook.after_step()
            for hook in self.hooks:
                hook.after_train()
        finally:
            self.progress.close()
        return self.final_results

    def run_step(self) -> Dict[str, float]:
        """One optimizer step over ``GRAD_ACCUM_STEPS`` micro-batches; returns the all-reduced loss terms."""
        assert self._data_iter is not None, "call train() (it builds the data iterator) before run_step()"
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        sums: Dict[str, torch.Tensor] = {}
        data_time = 0.0
        for micro in range(self.accum_steps):
            t0 = time.perf_counter()
            with preserved_rng():
                batch = next(self._data_iter)
            data_time += time.perf_counter() - t0
            last = micro == self.accum_steps - 1
            sync = contextlib.nullcontext()
            if not last and isinstance(self.model, DistributedDataParallel):
                sync = self.model.no_sync()
            with sync:
                with torch.autocast(self.device.type, enabled=self.amp):
                    loss_dict = self.model(batch, iteration=self.iter)
                _check_loss_dict(loss_dict, self.iter)
                total = sum(loss_dict.values())
                with stage("backward"):
                    self.scaler.scale(total / self.accum_steps).backward()
            for key, value in loss_dict.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float() / self.accum_steps
        losses = reduce_loss_terms(sums)
        bad = [key for key, value in losses.items() if not math.isfinite(value)]
        self.step_taken = not bad
        if bad:
            self._skip_step(bad)
        else:
            self.nonfinite_in_a_row = 0
            self._nonfinite_terms.clear()
            with stage("optimizer step"):
                self._optimizer_step()
        self.last_lr = max(group["lr"] for group in self.optimizer.param_groups)
        self.scheduler.step()
        self.last_losses, self.last_step_time, self.last_data_time = losses, time.perf_counter() - start, data_time
        return losses

    def _optimizer_step(self) -> None:
        clip = self.cfg.SOLVER.CLIP_GRADIENTS
        if clip.ENABLED:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            clip_gradients(params, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _skip_step(self, bad_terms: List[str]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row += 1
        self._nonfinite_terms.update(bad_terms)
        limit = self.cfg.SOLVER.MAX_CONSECUTIVE_NONFINITE
        logger.warning(
            "iteration %d: non-finite loss in %s; optimizer step skipped (%d in a row, limit %d)",
            self.iter,
            ", ".join(bad_terms),
            self.nonfinite_in_a_row,
            limit,
        )
        if limit > 0 and self.nonfinite_in_a_row >= limit:
            counts = ", ".join(f"{k} ({n}x)" for k, n in self._nonfinite_terms.most_common())
            raise FloatingPointError(
                f"training stopped at iteration {self.iter}: the loss was non-finite in {self.nonfinite_in_a_row} "
                f"consecutive iterations (SOLVER.MAX_CONSECUTIVE_NONFINITE = {limit}); non-finite terms: {counts}. "
                "Try a lower SOLVER.BASE_LR, SOLVER.AMP.ENABLED False, or check the data for degenerate boxes."
            )

    # --------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, iteration: int) -> Dict[str, Any]:
        """Evaluate on ``DATASETS.TEST`` (RNG-neutral) and append the results to ``metrics.json``."""
        if not self.cfg.DATASETS.TEST:
            return {}
        with preserved_rng():
            results = self.test(self.cfg, self.model)
        if self.progress is not None and results:
            self.progress.write_results(iteration, results)
        return results

    @classmethod
    def test(cls, cfg: Any, model: nn.Module) -> Dict[str, Any]:
        """Run inference and COCO evaluation on each of ``DATASETS.TEST``.

        Returns the result dict of the single test dataset, or ``{name: results}`` for several.
        """
        results: Dict[str, Any] = {}
        for name in cfg.DATASETS.TEST:
            loader = cls.build_test_loader(cfg, name)
            evaluator = cls.build_evaluator(cfg, name)
            results[name] = inference_on_dataset(unwrap_model(model), loader, evaluator)
            if comm.is_main_process() and results[name]:
                logger.info("evaluation results for %s:\n%s", name, format_results_table(results[name]))
                print_csv_format(results[name])
        comm.synchronize()
        return next(iter(results.values())) if len(results) == 1 else results


def _check_loss_dict(loss_dict: Any, iteration: int) -> None:
    if not isinstance(loss_dict, Mapping) or not loss_dict:
        raise TypeError(
            f"iteration {iteration}: the model in train mode must return a non-empty dict of scalar losses, "
            f"got {type(loss_dict).__name__}"
        )
    for key, value in loss_dict.items():
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise TypeError(f"iteration {iteration}: loss '{key}' must be a scalar tensor, got {shape}")


def reduce_loss_terms(losses: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """Mean of every loss term over processes (one all-reduce; keys sorted so every rank agrees).

    A term that is non-finite on any process is non-finite in the result.
    """
    keys = sorted(losses)
    stacked = torch.stack([losses[k].reshape(()) for k in keys])
    values = comm.all_reduce_mean(stacked).tolist()
    return dict(zip(keys, values))
