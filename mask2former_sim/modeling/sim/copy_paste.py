"""Online weakly-supervised copy-paste (SIM §3.3, Eq. 9, 11): what goes into the memory bank and what
comes out of it onto a training image.

:meth:`CopyPaste.paste` runs before the student's forward (from ``START_ITER``): with probability ``PROB`` per
image, one random bank entry gives ``clamp(round(FRACTION·n), MIN_INST, MAX_INST)`` instances drawn ∝
``S^SCORE_POWER`` (:func:`~.memory_bank.paste_instances`). :meth:`CopyPaste.push` stores an image with the
teacher's pseudo masks at input resolution (:func:`~.pseudo_masks.full_resolution_pseudo_masks`) and their
scores (Eq. 11).
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from ...structures.boxes import box_raster
from ..targets import ImageTarget
from .memory_bank import MemoryBank, num_instances_to_paste, paste_instances, sample_instances
from .pseudo_masks import full_resolution_pseudo_masks, mask_score

__all__ = ["CopyPaste"]


class CopyPaste:
    """The memory bank and the paste of SIM's online copy-paste.

    Args:
        memory_length: FIFO bank length in images (per process).
        prob: probability that a training image receives a paste.
        fraction, min_inst, max_inst: instances pasted, ``clamp(round(fraction·n), min_inst, max_inst)``.
        score_power: instances drawn ∝ ``S^score_power``.
        stride: mask stride of the pseudo masks.
    """

    def __init__(
        self,
        *,
        memory_length: int,
        prob: float,
        fraction: float,
        min_inst: int,
        max_inst: int,
        score_power: float,
        stride: int,
    ) -> None:
        self.bank = MemoryBank(memory_length)
        self.prob = prob
        self.fraction = fraction
        self.min_inst = min_inst
        self.max_inst = max_inst
        self.score_power = score_power
        self.stride = stride

    @classmethod
    def from_config(cls, cfg) -> "CopyPaste":
        cp = cfg.MODEL.SIM.COPY_PASTE
        return cls(
            memory_length=cp.MEMORY_LENGTH,
            prob=cp.PROB,
            fraction=cp.FRACTION,
            min_inst=cp.MIN_INST,
            max_inst=cp.MAX_INST,
            score_power=cp.SCORE_POWER,
            stride=cfg.MODEL.BOXINST.MASK_STRIDE,
        )

    def paste(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """With probability ``prob`` per image, paste instances of a random bank entry (new dicts; inputs kept).

        A pasted input's ``instances`` gain ``pasted`` (N,) flags, ``paste_masks`` (P, H, W) and
        ``paste_occlusion`` (H, W) (read by :func:`~..losses.sim.paste_targets`).
        """
        if len(self.bank) == 0:
            return batched_inputs
        out = []
        for x in batched_inputs:
            if float(torch.rand(())) >= self.prob:
                out.append(x)
                continue
            entry = self.bank.sample()
            k = num_instances_to_paste(len(entry["classes"]), self.fraction, self.min_inst, self.max_inst)
            chosen = sample_instances(entry["scores"], k, self.score_power)
            image = x["image"].cpu()
            padding = x.get("padding_mask")
            padding = torch.zeros(image.shape[-2:], dtype=torch.bool) if padding is None else padding.cpu().bool()
            inst = x["instances"]
            pasted = paste_instances(image, padding, inst["gt_boxes"].cpu(), inst["gt_classes"].cpu(), entry, chosen)
            new_inst = {k2: v for k2, v in inst.items() if k2 not in ("gt_boxes", "gt_classes")}
            new_inst.update(
                gt_boxes=pasted["boxes"],
                gt_classes=pasted["classes"],
                pasted=pasted["pasted"],
                paste_masks=pasted["paste_masks"],
                paste_occlusion=pasted["occlusion"],
            )
            out.append({**x, "image": pasted["image"], "instances": new_inst})
        return out

    def push(self, x: Dict[str, Any], target: ImageTarget, res: Dict[str, Any]) -> None:
        """Store input ``x`` with its instances that have pseudo foreground: their pseudo masks at input resolution
        (inside the box raster, minus pasted occluders and padding) and their scores (Eq. 11).

        Args:
            x: the training input (after any paste); target: its targets (``boxes``, ``labels``);
            res: its :class:`~.pseudo_masks.PseudoMaskGenerator` result.
        """
        keep = res["labels"].flatten(1).any(1)
        if not bool(keep.any()):
            return
        gts = res["gt"][keep]
        image = x["image"]
        height, width = image.shape[-2:]
        padding = x.get("padding_mask")
        padding = torch.zeros(height, width, dtype=torch.bool) if padding is None else padding.bool()
        region = box_raster(target["boxes"][gts].cpu(), height, width) & ~padding.cpu()
        occlusion = x["instances"].get("paste_occlusion")
        if occlusion is not None:
            region &= ~occlusion.cpu().bool()
        masks = full_resolution_pseudo_masks(res["prob"][keep].cpu(), res["tau_high"][keep].cpu(), region, self.stride)
        self.bank.push(
            {
                "image": image,
                "padding_mask": padding,
                "boxes": target["boxes"][gts],
                "classes": target["labels"][gts],
                "masks": masks,
                "scores": mask_score(res["prob"][keep], res["labels"][keep]),
            }
        )

    def __repr__(self) -> str:
        return (
            f"CopyPaste(memory_length={self.bank.max_length}, prob={self.prob}, fraction={self.fraction}, "
            f"instances=[{self.min_inst}, {self.max_inst}], score_power={self.score_power})"
        )
