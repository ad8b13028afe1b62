"""The momentum (EMA) teacher of SIM: a frozen copy of the whole network (backbone, pixel decoder, transformer
decoder) whose weights follow the student, ``θ_t ← m·θ_t + (1 − m)·θ_s`` after every optimizer step (SIM §3.4,
momentum 0.9999), with buffers (batch-norm statistics) copied.

The teacher is a submodule of the model, so it is saved in and restored from checkpoints with the model's
``state_dict`` and moves with ``model.to(device)``. Its parameters have ``requires_grad=False``, so the optimizer
(``engine.optimizer.get_param_groups`` skips them), gradient clipping (which clips the optimizer's parameters) and
DDP's gradient reducer (which registers only parameters that require grad) never see them. It is always in eval
mode (``train()`` is a no-op) and runs under ``torch.no_grad``. Its weights are a copy of the student made *after*
the student's weights are loaded (:meth:`EMATeacher.copy_from`, called before training by
:class:`EMATeacherHook`, a hook the trainer gets from the supervision); the ``initialized`` buffer records that, so
that a resumed run keeps the teacher from its checkpoint instead of copying the student again. The official
code built the teacher afresh (random init): not reproduced (docs/DESIGN.md).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List

import torch
from torch import nn

from ...utils.profiling import stage

__all__ = ["ema_update_", "EMATeacher"]


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: ``θ_t ← m·θ_t + (1 − m)·θ_s`` for every parameter, buffers copied from the student.

    Args:
        teacher, student: modules with the same structure (the teacher a deep copy of the student).
        momentum: m in [0, 1] (1 keeps the teacher, 0 copies the student).
    """
    t_params, s_params = list(teacher.named_parameters()), list(student.named_parameters())
    if [n for n, _ in t_params] != [n for n, _ in s_params]:
        raise ValueError(
            "EMA teacher and student parameters differ in names or order; the teacher must be a copy of the student"
        )
    if t_params:
        t_list = [p for _, p in t_params]
        s_list = [p.detach().to(p.dtype) for _, p in s_params]
        torch._foreach_mul_(t_list, momentum)
        torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)
    for (name, t_buf), (_, s_buf) in zip(teacher.named_buffers(), student.named_buffers()):
        t_buf.copy_(s_buf)


class EMATeacher(nn.Module):
    """Frozen copies of the student's ``backbone``, ``pixel_decoder`` and ``transformer_decoder``.

    Args:
        backbone, pixel_decoder, transformer_decoder: the student's modules (deep-copied here; call
            :meth:`copy_from` once the student's weights are loaded).
        momentum: EMA momentum m (``MODEL.SIM.EMA_MOMENTUM``).
    """

    part_names = ("backbone", "pixel_decoder", "transformer_decoder")

    def __init__(
        self, *, backbone: nn.Module, pixel_decoder: nn.Module, transformer_decoder: nn.Module, momentum: float
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"MODEL.SIM.EMA_MOMENTUM must be in [0, 1], found {momentum}")
        self.momentum = momentum
        self.backbone = copy.deepcopy(backbone)
        self.pixel_decoder = copy.deepcopy(pixel_decoder)
        self.transformer_decoder = copy.deepcopy(transformer_decoder)
        for p in self.parameters():
            p.requires_grad_(False)
        # True once the weights are the student's (copy_from) or come from a checkpoint that had a teacher
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        super().train(False)

    @classmethod
    def from_config(
        cls, cfg, backbone: nn.Module, pixel_decoder: nn.Module, transformer_decoder: nn.Module
    ) -> "EMATeacher":
        return cls(
            backbone=backbone,
            pixel_decoder=pixel_decoder,
            transformer_decoder=transformer_decoder,
            momentum=cfg.MODEL.SIM.EMA_MOMENTUM,
        )

    def train(self, mode: bool = True) -> "EMATeacher":
        """The teacher always stays in eval mode (no dropout / drop-path, frozen batch-norm statistics)."""
        return super().train(False)

    def _pairs(self, student: nn.Module) -> List[tuple]:
        missing = [name for name in self.part_names if not isinstance(getattr(student, name, None), nn.Module)]
        if missing:
            raise ValueError(f"the student must have the modules {self.part_names}; missing {missing}")
        return [(getattr(self, name), getattr(student, name)) for name in self.part_names]

    @torch.no_grad()
    def copy_from(self, student: nn.Module) -> None:
        """Teacher := student (parameters and buffers of its ``part_names`` modules); marks the teacher initialised."""
        for mine, theirs in self._pairs(student):
            ema_update_(mine, theirs, 0.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step towards the student (after every optimizer step)."""
        for mine, theirs in self._pairs(student):
            ema_update_(mine, theirs, self.momentum)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Dict[str, Any]:
        """Outputs of every prediction head and the mask features of a normalised, padded batch (B, 3, Hp, Wp).

        Returns:
            ``{"pred_logits", "pred_masks", "aux_outputs", "mask_features": (B, D, Hp/4, Wp/4)}``.
        """
        features = self.backbone(images)
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        outputs = self.transformer_decoder(multi_scale_features, mask_features)
        outputs["mask_features"] = mask_features
        return outputs

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"


class EMATeacherHook:
    """SIM §3.4 around the trainer's optimizer steps: before training the teacher becomes a copy of the student
    (whose weights are loaded by then) unless a checkpoint restored it; after every optimizer step taken,
    ``θ_t ← m·θ_t + (1 − m)·θ_s``. A trainer hook (``before_train``, ``before_step``, ``after_step``,
    ``after_train``; ``trainer`` set when registered), returned by :meth:`SIMSupervisor.hooks`.

    Args:
        teacher: the :class:`EMATeacher`.
        student: the module holding the networks the teacher follows (the model).
    """

    trainer = None

    def __init__(self, teacher: EMATeacher, student: nn.Module) -> None:
        self.teacher = teacher
        self.student = student

    def before_train(self) -> None:
        if not bool(self.teacher.initialized):
            self.teacher.copy_from(self.student)

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        if self.trainer.step_taken:
            with stage("teacher EMA"):
                self.teacher.update(self.student)

    def after_train(self) -> None:
        pass
