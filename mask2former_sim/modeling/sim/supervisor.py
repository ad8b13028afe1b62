"""``SIMSupervisor``: the SIM module of Figure 2, the supervision part that SUPERVISION ``sim`` adds to BoxInst-M2F.

It composes four components, each built from the config on its own: the EMA teacher (:mod:`.teacher`), the class
prototypes (:mod:`.prototypes`), the pseudo-mask generator (:mod:`.pseudo_masks`) and the online copy-paste
(:mod:`.copy_paste`). In one training iteration (SIM §3, Eq. 1-11):

1. :meth:`prepare_inputs` — bank instances pasted onto the batch, before the student forward, once SIM has started;
2. :meth:`build_targets` — the paste targets (:func:`~..losses.sim.paste_targets`), after the box targets;
3. :meth:`after_matching` — with the student matched at every head: the teacher forward (no grad), the pseudo masks
   of every original GT (Eq. 1, 6, 7), the bank filled with them (at input resolution), and the prototype update
   (Eq. 2-5) from the student's features at the pseudo-foreground pixels (before SIM starts, the pixels with
   ``M_I > INSTANCE_MAP_THRESH`` inside the box); the pseudo targets from the start on.

The teacher's EMA update after each optimizer step, and its copy of the student before training, run in the trainer
through the hook :meth:`SIMSupervisor.hooks` returns (:class:`~.teacher.EMATeacherHook`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...utils.profiling import stage
from ..box_fit import mask_box_fill, mask_box_iou
from ..losses.sim import paste_targets, with_pseudo_masks
from ..pairwise_schedule import PairwiseSchedule
from ..targets import MatchedBatch, SupervisionPart, Targets
from .copy_paste import CopyPaste
from .prototypes import PrototypeBank
from .pseudo_masks import PseudoMaskGenerator
from .teacher import EMATeacher, EMATeacherHook

__all__ = ["SIMSupervisor", "teacher_statistics"]


def teacher_statistics(targets: Targets, results: Sequence[Dict[str, Any]], stride: int) -> Dict[str, float]:
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


class SIMSupervisor(SupervisionPart):
    """Teacher, prototypes, pseudo masks and copy-paste of SIM.

    Args:
        teacher: the EMA teacher (a copy of the student's networks).
        prototypes: the class prototypes (Eq. 1-5).
        pseudo_masks: the pseudo-mask generator (Eq. 1, 6, 7).
        copy_paste: the online copy-paste, or None (off).
        start_iter: first iteration with the pseudo and paste losses.
        stride: mask stride (``MODEL.BOXINST.MASK_STRIDE``).
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
        stride: int,
        pairwise_warmup_end: Optional[Callable[[], Optional[int]]] = None,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.prototypes = prototypes
        self.pseudo_masks = pseudo_masks
        self.copy_paste = copy_paste
        self.start_iter = start_iter
        self.stride = stride
        self.pairwise_warmup_end = pairwise_warmup_end
        self._statistics: Dict[str, float] = {}

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
            stride=cfg.MODEL.BOXINST.MASK_STRIDE,
            pairwise_warmup_end=pairwise_schedule.warmup_end if adaptive else None,
        )

    def hooks(self, model: nn.Module) -> List[Any]:
        """The teacher's copy of the student before training and its EMA update after each optimizer step."""
        return [EMATeacherHook(self.teacher, model)]

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

    def prepare_inputs(self, batched_inputs: List[Dict[str, Any]], iteration: int) -> List[Dict[str, Any]]:
        """The batch with bank instances pasted (:meth:`.CopyPaste.paste`) once SIM has started."""
        if self.copy_paste is None or not self.started(iteration):
            return batched_inputs
        with stage("copy-paste (CPU)"):
            return self.copy_paste.paste(batched_inputs)

    def build_targets(self, targets: Targets, batched_inputs: Sequence[Dict[str, Any]], iteration: int) -> Targets:
        """The paste targets: flags, bank masks of the pasted instances, originals' box masks minus the paste."""
        with stage("paste targets"):
            return paste_targets(targets, batched_inputs, self.stride)

    @torch.no_grad()
    def after_matching(self, targets: Targets, batch: MatchedBatch) -> Targets:
        """Teacher forward, pseudo masks, bank push and prototype update of one iteration; the targets gain the
        pseudo masks once SIM has started.

        The student's ``mask_features`` Z give the prototypes' centroids (Eq. 2-5), the teacher's Z' the semantic
        map M_S (Eq. 1) (Fig. 2; the official code).
        """
        if not bool(self.teacher.initialized):
            raise RuntimeError(
                "the SIM teacher is not initialised: copy the student into it once its weights are loaded "
                "(model.supervision.sim.teacher.copy_from(model); the trainer's EMATeacherHook does it)"
            )
        with stage("teacher forward"):
            teacher_outputs = self.teacher(batch.images)
        with stage("pseudo masks (Eq. 1, 6, 7)"):
            results = self.pseudo_masks(teacher_outputs, targets, batch.indices, self.prototypes.prototypes)
        started = self.started(batch.iteration)
        self._statistics = {}
        if self.statistics_due:
            with stage("teacher statistics"):
                self._statistics = teacher_statistics(targets, results, self.stride)
            self._statistics["bank_size"] = float(len(self.bank)) if self.bank is not None else 0.0
            self._statistics["started"] = float(started)
        student_features = F.normalize(batch.outputs["mask_features"].detach().float(), dim=1)
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
                    with stage("bank push"):
                        self.copy_paste.push(batch.batched_inputs[b], target, res)
            else:
                foreground = (res["instance"] > self.pseudo_masks.instance_map_thresh) & res["region"]
            classes = target["labels"][gts]
            for c in classes.unique().tolist():
                pixels = foreground[classes == c].any(0)
                pixel_sets.append((c, student_features[b][:, pixels].T))
        with stage("prototypes (Sinkhorn)"):
            self.prototypes.update(pixel_sets)
        return with_pseudo_masks(targets, pseudo)

    def statistics(self) -> Dict[str, float]:
        """The teacher's fit to the boxes (:func:`teacher_statistics`), the bank size and whether SIM has started."""
        return {f"sim/{k}": v for k, v in self._statistics.items()}

    def extra_repr(self) -> str:
        return f"start_iter={self.start_iter}, pseudo_masks={self.pseudo_masks}, copy_paste={self.copy_paste}"
