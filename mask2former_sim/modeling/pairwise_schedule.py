"""When BoxInst's pairwise term acts (``MODEL.BOXINST.PAIRWISE``): a fixed start, or a start that follows the model.

The pairwise term pulls every cell of a kept colour edge towards the side of 0.5 it is on; started before the
projection term has formed Mask2Former's masks it empties them into outlines
(docs/experiments/pairwise_term_collapse.md). BoxInst starts it at iteration 0 with a 10k-iteration warm-up, which
suits CondInst's masks (blobs from the start) but not Mask2Former's (noise at the start). A fixed start found on a
short run does not transfer to a long one, so :class:`PairwiseSchedule` can instead start the warm-up once the
matched masks have formed: when the running mean of the box IoU of the final head's matched masks
(:func:`~.box_fit.mask_box_iou`) reaches ``START_BOX_IOU``.

Its state (the iteration the warm-up started at, the running mean) lives in buffers, so checkpoints carry it and
``--resume`` continues exactly.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import torch

from ..utils import comm
from ..utils.profiling import stage
from .box_fit import mask_box_fill, mask_box_iou
from .criterion import matched_logits, matched_rows, prediction_heads
from .targets import MatchedBatch, SupervisionPart, Targets

__all__ = ["pairwise_warmup_factor", "PairwiseSchedule"]

logger = logging.getLogger(__name__)


def pairwise_warmup_factor(iteration: int, warmup_iters: int, start_iter: int = 0) -> float:
    """Weight factor of the pairwise term: 0 before ``start_iter``, then a linear warm-up over ``warmup_iters``.

    ``clip((iteration − start_iter) / warmup_iters, 0, 1)``; with ``start_iter`` 0 this is BoxInst's warm-up.
    """
    if iteration < start_iter:
        return 0.0
    if warmup_iters <= 0:
        return 1.0
    return min(float(iteration - start_iter) / float(warmup_iters), 1.0)


class PairwiseSchedule(SupervisionPart):
    """The pairwise term's weight factor at each iteration, and the matched masks' fit to their boxes (a part of
    box and SIM supervision: after the matching it measures the final head's matched masks).

    Args:
        start_iter: fixed start of the warm-up; with ``start_box_iou`` > 0, the earliest iteration it may start.
        warmup_iters: length of the linear warm-up.
        start_box_iou: > 0: start the warm-up at the first iteration ≥ ``start_iter`` at which the running mean of
            the matched masks' box IoU reaches this; 0: at ``start_iter``.
        momentum: of the running mean, ``r ← m·r + (1 − m)·mean IoU of the batch`` (the first batch sets r).
        stride: mask stride of the matched masks (``MODEL.BOXINST.MASK_STRIDE``).
    """

    def __init__(
        self,
        *,
        start_iter: int,
        warmup_iters: int,
        start_box_iou: float = 0.0,
        momentum: float = 0.98,
        stride: int = 4,
    ) -> None:
        super().__init__()
        if not 0.0 <= start_box_iou <= 1.0:
            raise ValueError(f"MODEL.BOXINST.PAIRWISE.START_BOX_IOU must lie in [0, 1], found {start_box_iou}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"MODEL.BOXINST.PAIRWISE.BOX_IOU_MOMENTUM must lie in [0, 1), found {momentum}")
        self.start_iter = int(start_iter)
        self.warmup_iters = int(warmup_iters)
        self.start_box_iou = float(start_box_iou)
        self.momentum = float(momentum)
        self.stride = int(stride)
        self._statistics: Dict[str, float] = {}
        self.register_buffer("started_at", torch.tensor(-1, dtype=torch.int64))  # adaptive start, -1 = not yet
        self.register_buffer("running_box_iou", torch.tensor(0.0))
        self.register_buffer("num_observed", torch.tensor(0, dtype=torch.int64))

    @classmethod
    def from_config(cls, cfg) -> "PairwiseSchedule":
        pw = cfg.MODEL.BOXINST.PAIRWISE
        return cls(
            start_iter=pw.START_ITER,
            warmup_iters=pw.WARMUP_ITERS,
            start_box_iou=pw.START_BOX_IOU,
            momentum=pw.BOX_IOU_MOMENTUM,
            stride=cfg.MODEL.BOXINST.MASK_STRIDE,
        )

    @property
    def adaptive(self) -> bool:
        return self.start_box_iou > 0

    def warmup_start(self) -> Optional[int]:
        """The iteration the warm-up starts at (None while an adaptive start has not happened)."""
        if not self.adaptive:
            return self.start_iter
        started = int(self.started_at)
        return started if started >= 0 else None

    def warmup_end(self) -> Optional[int]:
        """The first iteration at full pairwise weight (None while an adaptive start has not happened)."""
        start = self.warmup_start()
        return None if start is None else start + max(self.warmup_iters, 0)

    def factor(self, iteration: int) -> float:
        """The pairwise term's weight factor at ``iteration`` (:func:`pairwise_warmup_factor` from the start)."""
        start = self.warmup_start()
        return 0.0 if start is None else pairwise_warmup_factor(iteration, self.warmup_iters, start)

    @torch.no_grad()
    def observe(
        self, iteration: int, mask_logits: torch.Tensor, gt_boxes: torch.Tensor, box_masks: torch.Tensor
    ) -> Dict[str, float]:
        """Measure matched masks against their boxes; with an adaptive start, update the running mean (all
        processes agree: the batch mean is all-reduced) and start the warm-up when it reaches ``start_box_iou``.
        Call before the losses of ``iteration``.

        Args:
            mask_logits: (M, h, w) matched mask logits; gt_boxes: (M, 4) XYXY input pixels; box_masks: (M, h, w).

        Returns:
            ``{"box_fit/box_iou", "box_fit/box_fill"}`` (batch means on this process), ``"box_fit/running_box_iou"``
            with an adaptive start, and ``"pairwise/factor"``.
        """
        probs = mask_logits.detach().float().sigmoid()
        ious = mask_box_iou(probs, gt_boxes, self.stride)
        stats = {
            "box_fit/box_iou": float(ious.mean()) if len(ious) else float("nan"),
            "box_fit/box_fill": float(mask_box_fill(probs, box_masks).mean()) if len(ious) else float("nan"),
        }
        if self.adaptive and self.warmup_start() is None:
            total = comm.all_reduce_sum(torch.stack([ious.sum(), ious.new_tensor(float(len(ious)))]))
            if float(total[1]) > 0:
                mean = total[0] / total[1]
                first = int(self.num_observed) == 0
                running = mean if first else self.momentum * self.running_box_iou + (1 - self.momentum) * mean
                self.running_box_iou.copy_(running)
                self.num_observed += 1
            running = float(self.running_box_iou)
            if iteration >= self.start_iter and int(self.num_observed) > 0 and running >= self.start_box_iou:
                self.started_at.fill_(iteration)
                logger.info(
                    "iteration %d: running mean of the matched masks' box IoU %.3f >= %.3f "
                    "(MODEL.BOXINST.PAIRWISE.START_BOX_IOU): the pairwise warm-up starts (full weight from %d)",
                    iteration,
                    running,
                    self.start_box_iou,
                    self.warmup_end(),
                )
        if self.adaptive:
            stats["box_fit/running_box_iou"] = float(self.running_box_iou)
        stats["pairwise/factor"] = self.factor(iteration)
        return stats

    def after_matching(self, targets: Targets, batch: MatchedBatch) -> Targets:
        """Observe the final head's matched masks (targets unchanged): when statistics are due, or while an adaptive
        start waits for its box IoU."""
        if not self.statistics_due and not (self.adaptive and self.warmup_start() is None):
            self._statistics = {}
            return targets
        with stage("box fit of the matched masks"):
            final, indices = prediction_heads(batch.outputs)[0][1], batch.indices[0]
            self._statistics = self.observe(
                batch.iteration,
                matched_logits(final["pred_masks"], indices),
                matched_rows(targets, indices, "boxes"),
                matched_rows(targets, indices, "box_masks"),
            )
        return targets

    def statistics(self) -> Dict[str, float]:
        return dict(self._statistics)

    def extra_repr(self) -> str:
        start = f"box IoU >= {self.start_box_iou} from {self.start_iter}" if self.adaptive else str(self.start_iter)
        return f"start={start}, warmup_iters={self.warmup_iters}"
