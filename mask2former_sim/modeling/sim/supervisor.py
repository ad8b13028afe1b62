"""``SIMSupervisor``: the SIM module of Figure 2, owned by ``MaskFormer`` in ``SUPERVISION sim``.

It composes four parts, each built from the config on its own: the EMA teacher (:mod:`.teacher`), the class
prototypes (:mod:`.prototypes`), the pseudo-mask generator (:mod:`.pseudo_masks`) and the online copy-paste
(:mod:`.copy_paste`). One training iteration (SPEC §5-6):

1. :meth:`paste` — copy-paste bank instances onto the batch (before the student forward; from ``START_ITER``).
2. the student forward, the targets (:mod:`..targets`) and the student's Hungarian matching at every head.
3. :meth:`forward` — the teacher forward (no grad), the pseudo masks of every original GT (Eq. 1, 6, 7), the
   bank filled with them (from ``START_ITER``, at input resolution), and the prototype update (Eq. 2-5) from the
   student's features at the pseudo-foreground pixels (before ``START_ITER`` the pixels with
   ``M_I > INSTANCE_MAP_THRESH`` inside the box). It returns the pseudo targets (from ``START_ITER``) and, at
   logging iterations, the teacher's statistics.
4. the losses, then after the optimizer step :meth:`update_teacher` (EMA).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..box_fit import mask_box_fill, mask_box_iou
from ..pairwise_schedule import PairwiseSchedule
from .copy_paste import CopyPaste
from .prototypes import PrototypeBank
from .pseudo_masks import PseudoMaskGenerator
from .teacher import EMATeacher

__all__ = ["SIMResult", "SIMSupervisor", "teacher_statistics"]

logger = logging.getLogger(__name__)

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


class SIMResult(NamedTuple):
    """What :meth:`SIMSupervisor.forward` computes for the losses and the log.

    Attributes:
        pseudo: per image (``pseudo_labels``, ``pseudo_weights``), each (N, h, w) over ALL its GTs (pasted rows
            zero), from ``START_ITER`` on; None before.
        stats: :func:`teacher_statistics` at logging iterations, else None.
    """

    pseudo: Optional[List[Tuple[torch.Tensor, torch.Tensor]]]
    stats: Optional[Dict[str, float]]


def teacher_statistics(
    targets: Sequence[Dict[str, torch.Tensor]], results: Sequence[Dict[str, Any]], stride: int
) -> Dict[str, float]:
    """How well the teacher's instance maps fit their boxes.

    ``teacher_box_iou``: mean IoU between each GT box and the box of ``M_I > 0.5`` (it must rise before
    START_ITER); ``teacher_box_fill``: the share of the GT box that ``M_I > 0.5`` covers (an outline has the box
    of the object but fills little of it: box IoU alone hides that collapse); ``pseudo_fg_fraction``: the
    foreground share of the pseudo masks inside the boxes.
    """
    ious, fill, fg = [], [], []
    for target, res in zip(targets, results):
        if len(res["gt"]) == 0:
            continue
        ious.append(mask_box_iou(res["instance"], target["boxes"][res["gt"]], stride))
        fill.append(mask_box_fill(res["instance"], res["box_masks"]))
        fg.append(res["labels"].flatten(1).sum(1) / res["box_masks"].flatten(1).sum(1).clamp_min(1))
    return {
        "teacher_box_iou": float(torch.cat(ious).mean()) if ious else float("nan"),
        "teacher_box_fill": float(torch.cat(fill).mean()) if fill else float("nan"),
        "pseudo_fg_fraction": float(torch.cat(fg).mean()) if fg else float("nan"),
    }


class SIMSupervisor(nn.Module):
    """Teacher, prototypes, pseudo masks and copy-paste of SIM.

    Args:
        teacher: the EMA teacher (a copy of the student's networks).
        prototypes: the class prototypes (Eq. 1-5).
        pseudo_masks: the pseudo-mask generator (Eq. 1, 6, 7).
        copy_paste: the online copy-paste, or None (off).
        start_iter: first iteration with the pseudo and paste losses.
        log_period: every this many iterations, compute and log :func:`teacher_statistics`; 0 = never.
        pairwise_warmup_end: with a pairwise term that starts once the masks have formed
            (:class:`~..pairwise_schedule.PairwiseSchedule`), a callable giving the iteration its warm-up ends
            (None before it starts): SIM's losses then also wait for it (the paper's order); None otherwise.
    """

    def __init__(
        self,
        *,
        teacher: EMATeacher,
        prototypes: PrototypeBank,
        pseudo_masks: PseudoMaskGenerator,
        copy_paste: Optional[CopyPaste],
        start_iter: int,
        log_period: int = 0,
        pairwise_warmup_end: Optional[Callable[[], Optional[int]]] = None,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.prototypes = prototypes
        self.pseudo_masks = pseudo_masks
        self.copy_paste = copy_paste
        self.start_iter = start_iter
        self.log_period = log_period
        self.pairwise_warmup_end = pairwise_warmup_end

    @classmethod
    def from_config(
        cls,
        cfg,
        backbone: nn.Module,
        pixel_decoder: nn.Module,
        transformer_decoder: nn.Module,
        pairwise_schedule: Optional[PairwiseSchedule] = None,
    ) -> "SIMSupervisor":
        sim = cfg.MODEL.SIM
        adaptive = pairwise_schedule is not None and pairwise_schedule.adaptive
        return cls(
            teacher=EMATeacher.from_config(cfg, backbone, pixel_decoder, transformer_decoder),
            prototypes=PrototypeBank.from_config(cfg),
            pseudo_masks=PseudoMaskGenerator.from_config(cfg),
            copy_paste=CopyPaste.from_config(cfg) if sim.COPY_PASTE.ENABLED else None,
            start_iter=sim.START_ITER,
            log_period=cfg.LOG_PERIOD,
            pairwise_warmup_end=pairwise_schedule.warmup_end if adaptive else None,
        )

    @property
    def bank(self):
        """The copy-paste memory bank (None without copy-paste)."""
        return self.copy_paste.bank if self.copy_paste is not None else None

    def started(self, iteration: int) -> bool:
        """Whether the pseudo and paste losses are on: ``iteration >= START_ITER`` and, with a pairwise term that
        starts once the masks have formed, its warm-up has ended."""
        if iteration < self.start_iter:
            return False
        if self.pairwise_warmup_end is None:
            return True
        end = self.pairwise_warmup_end()
        return end is not None and iteration >= end

    # ------------------------------------------------------------------------------------------------ teacher
    def init_teacher(self, student_parts: Sequence[nn.Module]) -> bool:
        """Copy the student into the teacher unless it already holds a copy (or a checkpoint's teacher)."""
        if bool(self.teacher.initialized):
            return False
        self.teacher.copy_from(student_parts)
        return True

    def update_teacher(self, student_parts: Sequence[nn.Module]) -> None:
        """EMA step of the teacher (after each optimizer step)."""
        self.teacher.update(student_parts)

    # --------------------------------------------------------------------------------------------- copy-paste
    def paste(self, batched_inputs: List[Dict[str, Any]], iteration: int) -> List[Dict[str, Any]]:
        """The batch with bank instances pasted (:meth:`.CopyPaste.paste`) once SIM has started."""
        if self.copy_paste is None or not self.started(iteration):
            return batched_inputs
        return self.copy_paste.paste(batched_inputs)

    # -------------------------------------------------------------------------------------- pseudo masks etc.
    @torch.no_grad()
    def forward(
        self,
        images: torch.Tensor,
        batched_inputs: List[Dict[str, Any]],
        targets: List[Dict[str, torch.Tensor]],
        indices_per_head: Sequence[Indices],
        iteration: int,
        student_features: torch.Tensor,
    ) -> SIMResult:
        """Teacher forward, pseudo masks, bank push and prototype update of one iteration.

        ``student_features`` (B, D, h, w) are the student's ``mask_features`` Z: the prototypes' centroids
        (Eq. 2-5) come from Z, the semantic map M_S (Eq. 1) from the teacher's Z' (Fig. 2; the official code).
        """
        teacher_outputs = self.teacher(images)
        results = self.pseudo_masks(teacher_outputs, targets, indices_per_head, self.prototypes.prototypes)
        started = self.started(iteration)
        stats = None
        if self.log_period > 0 and (iteration + 1) % self.log_period == 0:
            stats = teacher_statistics(targets, results, self.pseudo_masks.stride)
            stats["bank_size"] = float(len(self.bank)) if self.bank is not None else 0.0
            logger.info(
                "SIM iter %d: teacher box IoU %.3f, box fill %.3f, pseudo foreground %.3f, bank %d (%s)",
                iteration,
                stats["teacher_box_iou"],
                stats["teacher_box_fill"],
                stats["pseudo_fg_fraction"],
                stats["bank_size"],
                "pseudo and paste losses on" if started else "warm-up: box losses only",
            )
        student_features = F.normalize(student_features.detach().float(), dim=1)
        pixel_sets = []
        pseudo = [] if started else None
        for b, (target, res) in enumerate(zip(targets, results)):
            gts, labels = res["gt"], res["labels"]
            if started:
                n, (h, w) = len(target["labels"]), labels.shape[-2:]
                pseudo_labels, pseudo_weights = labels.new_zeros(n, h, w), labels.new_zeros(n, h, w)
                pseudo_labels[gts] = labels
                pseudo_weights[gts] = res["weights"]
                pseudo.append((pseudo_labels, pseudo_weights))
                foreground = labels > 0
                if self.copy_paste is not None:
                    self.copy_paste.push(batched_inputs[b], target, res)
            else:
                foreground = (res["instance"] > self.pseudo_masks.instance_map_thresh) & res["region"]
            classes = target["labels"][gts]
            for c in classes.unique().tolist():
                pixels = foreground[classes == c].any(0)
                pixel_sets.append((c, student_features[b][:, pixels].T))
        self.prototypes.update(pixel_sets)
        return SIMResult(pseudo=pseudo, stats=stats)

    def extra_repr(self) -> str:
        return f"start_iter={self.start_iter}, pseudo_masks={self.pseudo_masks}, copy_paste={self.copy_paste}"
