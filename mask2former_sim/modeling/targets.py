"""The per-image training targets the loss families read, built here and returned (never changed in place).

:meth:`~.meta_arch.MaskFormer.forward` composes them in this order:

1. :func:`image_targets` — ``labels`` (N,), ``boxes`` (N, 4) XYXY input pixels, ``padding_mask`` (Hp, Wp), and in
   mask supervision ``masks`` (N, Hp, Wp);
2. :func:`box_targets` (box and SIM supervision) — ``box_masks`` (N, h, w) and ``color_similarity`` (E, h, w) at
   the mask stride;
3. :func:`paste_targets` (SIM) — ``pasted`` (N,), ``paste_masks`` and ``paste_weights`` (N, h, w), and the
   originals' ``box_masks`` minus the pasted pixels;
4. :func:`with_pseudo_masks` (SIM, from ``START_ITER``, after the student's matching) — ``pseudo_labels`` and
   ``pseudo_weights`` (N, h, w).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .losses.boxinst import boxes_to_stride_masks, images_color_similarity
from .sim.memory_bank import place

__all__ = ["image_targets", "box_targets", "paste_targets", "with_pseudo_masks"]

Targets = List[Dict[str, torch.Tensor]]


def image_targets(
    batched_inputs: Sequence[Dict[str, Any]],
    padded_size: Tuple[int, int],
    device: torch.device,
    num_classes: int,
    with_masks: bool,
) -> Targets:
    """Per-image targets at the padded input size.

    Args:
        batched_inputs: training inputs (``image``, ``instances`` with ``gt_boxes``, ``gt_classes`` and, with
            ``with_masks``, ``gt_masks``; ``padding_mask`` optional).
        padded_size: (Hp, Wp) of the batch.
        num_classes: K; labels outside ``[0, K)`` are an error naming the input.
        with_masks: carry ``masks`` (mask supervision only: box and SIM never read GT masks).

    Returns:
        dicts with ``labels`` int64 (N,), ``boxes`` float (N, 4), ``padding_mask`` bool (Hp, Wp) (True = padding,
        from the mapper's mask and the batch padding) and, with ``with_masks``, ``masks`` bool (N, Hp, Wp).
    """
    hp, wp = padded_size
    targets = []
    for i, x in enumerate(batched_inputs):
        if "instances" not in x:
            raise KeyError(f"training input {i} has no 'instances' (keys: {sorted(x)})")
        inst = x["instances"]
        h, w = int(x["image"].shape[-2]), int(x["image"].shape[-1])
        padding_mask = torch.ones(hp, wp, dtype=torch.bool, device=device)
        if "padding_mask" in x:
            padding_mask[:h, :w] = x["padding_mask"].to(device, dtype=torch.bool)
        else:
            padding_mask[:h, :w] = False
        labels = inst["gt_classes"].to(device, dtype=torch.int64)
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise ValueError(
                f"training input {i} (image_id {x.get('image_id')}): gt_classes must lie in "
                f"[0, {num_classes}) (MODEL.SEM_SEG_HEAD.NUM_CLASSES), found {labels.tolist()}"
            )
        target = {
            "labels": labels,
            "boxes": inst["gt_boxes"].to(device, dtype=torch.float32).reshape(-1, 4),
            "padding_mask": padding_mask,
        }
        if with_masks:
            if "gt_masks" not in inst:
                raise KeyError(
                    f"training input {i}: SUPERVISION 'mask' needs instances['gt_masks'] (keys: "
                    f"{sorted(inst)}); use a dataset with segmentations or a box supervision mode"
                )
            gt_masks = inst["gt_masks"].to(device, dtype=torch.bool)
            masks = torch.zeros(gt_masks.shape[0], hp, wp, dtype=torch.bool, device=device)
            masks[:, : gt_masks.shape[-2], : gt_masks.shape[-1]] = gt_masks
            target["masks"] = masks
        targets.append(target)
    return targets


def _remove_bottom_rows(valid: torch.Tensor, rows: int) -> torch.Tensor:
    """Mark the last ``rows`` rows of real image content of every image invalid (BoxInst's bottom-pixel removal)."""
    if rows <= 0:
        return valid
    valid = valid.clone()
    row_has_content = valid.any(dim=2)  # (B, H)
    height = valid.shape[1]
    last = torch.where(row_has_content, torch.arange(height, device=valid.device), -1).amax(dim=1)
    for b, last_row in enumerate(last.tolist()):
        if last_row >= 0:
            valid[b, max(last_row + 1 - rows, 0) : last_row + 1] = False
    return valid


@torch.no_grad()
def box_targets(
    targets: Targets,
    raw_images: torch.Tensor,
    stride: int,
    kernel_size: int,
    dilation: int,
    theta: float,
    bottom_pixels_removed: int = 0,
) -> Targets:
    """``targets`` with ``box_masks`` (N, Hp/s, Wp/s) and ``color_similarity`` (k²−1, Hp/s, Wp/s) added.

    The colour similarity is computed once per batch and read by every head.

    Args:
        targets: per-image dicts with ``boxes`` (N, 4) XYXY input pixels and ``padding_mask`` (Hp, Wp).
        raw_images: (B, 3, Hp, Wp) un-normalised RGB 0–255, zero-padded like the network input.
    """
    hp, wp = raw_images.shape[-2:]
    if hp % stride or wp % stride:
        raise ValueError(f"padded input {hp}x{wp} must be divisible by MODEL.BOXINST.MASK_STRIDE = {stride}")
    valid = ~torch.stack([t["padding_mask"] for t in targets])
    valid = _remove_bottom_rows(valid, bottom_pixels_removed)
    similarity = images_color_similarity(raw_images, valid, stride, kernel_size, dilation, theta)
    return [
        {**t, "box_masks": boxes_to_stride_masks(t["boxes"], hp, wp, stride), "color_similarity": sim}
        for t, sim in zip(targets, similarity)
    ]


@torch.no_grad()
def paste_targets(targets: Targets, batched_inputs: Sequence[Dict[str, Any]], stride: int) -> Targets:
    """``targets`` (with ``box_masks``) plus SIM's copy-paste targets.

    ``pasted`` (N,) bool flags the instances pasted by :meth:`~.sim.copy_paste.CopyPaste.paste` (the last ones);
    their ``paste_masks`` (N, h, w) are their pasted pixels sampled at the mask stride (offset ``stride // 2``,
    where the box masks are sampled) and ``paste_weights`` (N, h, w) is 1 on real image pixels; the other
    instances lose the pasted pixels from their ``box_masks`` (a box minus its occluder).
    """
    s, off = stride, stride // 2
    out = []
    for target, x in zip(targets, batched_inputs):
        box_masks = target["box_masks"]
        n, (hp, wp) = box_masks.shape[0], target["padding_mask"].shape
        device = box_masks.device
        inst = x["instances"]
        pasted = inst.get("pasted", torch.zeros(n, dtype=torch.bool)).to(device)
        paste_masks = box_masks.new_zeros(box_masks.shape)
        if bool(pasted.any()):
            masks = place(inst["paste_masks"].to(device), hp, wp, False)[:, off::s, off::s]
            paste_masks[pasted] = masks.to(paste_masks)
            occlusion = place(inst["paste_occlusion"].to(device), hp, wp, False)[off::s, off::s]
            box_masks = box_masks.clone()
            box_masks[~pasted] = box_masks[~pasted] * (~occlusion).to(box_masks)
        valid = (~target["padding_mask"][off::s, off::s]).float()
        out.append(
            {
                **target,
                "box_masks": box_masks,
                "pasted": pasted,
                "paste_masks": paste_masks,
                "paste_weights": valid[None].expand(n, -1, -1),
            }
        )
    return out


def with_pseudo_masks(targets: Targets, pseudo: Optional[Sequence[Tuple[torch.Tensor, torch.Tensor]]]) -> Targets:
    """``targets`` with SIM's ``pseudo_labels`` and ``pseudo_weights`` (N, h, w) per image (Eq. 8's M̂ and W),
    or unchanged when ``pseudo`` is None (before ``START_ITER``)."""
    if pseudo is None:
        return list(targets)
    return [{**t, "pseudo_labels": labels, "pseudo_weights": weights} for t, (labels, weights) in zip(targets, pseudo)]
