"""Training targets: the per-image dict the loss families read (:class:`ImageTarget`), and the parts of a
supervision mode that build it.

Every mode's training forward (:meth:`~.meta_arch.MaskFormer.forward`) is the same path; what differs lives in the
mode's :class:`SupervisionPart` objects, listed per mode in :mod:`.supervision`:

1. ``prepare_inputs`` — before the network (SIM: paste bank instances onto the images);
2. ``build_targets`` — after :func:`image_targets` (``labels``, ``boxes``, ``padding_mask``), in the mode's order
   (mask: the GT masks; box: box masks and colour similarities; SIM: also the paste targets);
3. ``after_matching`` — once the student's queries are matched at every head (a :class:`MatchedBatch`; the pairwise
   schedule watches the matched masks; SIM: the teacher pass, the pseudo masks, the bank and the prototypes).

Targets are built and returned, never changed in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple, TypedDict

import torch
from torch import nn

__all__ = ["ImageTarget", "Targets", "Indices", "MatchedBatch", "SupervisionPart", "image_targets"]


class ImageTarget(TypedDict, total=False):
    """The targets of one training image (a plain dict at run time). N is the image's instance count (pasted ones
    included), Hp × Wp the padded input size of the batch, s the mask stride (``MODEL.BOXINST.MASK_STRIDE``); rows
    follow the order of ``labels``.

    Attributes:
        labels: int64 (N,), the class of each instance in [0, K). :func:`image_targets`, every mode.
        boxes: float32 (N, 4), XYXY in input pixels (pasted instances: the tight box of their pasted pixels).
            :func:`image_targets`, every mode.
        padding_mask: bool (Hp, Wp), True on padding (the mapper's and the batch's). :func:`image_targets`, every
            mode.
        masks: bool (N, Hp, Wp), the GT masks at the padded input size. :class:`~.losses.mask.MaskTargets`, mode
            ``mask``.
        box_masks: float32 (N, Hp/s, Wp/s) in {0, 1}, each box's raster sampled at the mask stride
            (:func:`~..structures.boxes.boxes_to_stride_masks`). :class:`~.losses.boxinst.BoxTargets`, modes ``box``
            and ``sim``; in ``sim`` :func:`~.losses.sim.paste_targets` removes the pasted pixels from the original
            instances' rows (a box minus its occluder).
        color_similarity: float32 (k²−1, Hp/s, Wp/s) in [0, 1], the colour similarity of each mask-stride pixel with
            its k×k dilated neighbours (BoxInst Eq. 3; 0 on padding and the removed bottom rows).
            :class:`~.losses.boxinst.BoxTargets`, modes ``box`` and ``sim``.
        pasted: bool (N,), True for the instances pasted onto the image by SIM's copy-paste (the last ones).
            :func:`~.losses.sim.paste_targets`, mode ``sim``.
        paste_masks: float32 (N, Hp/s, Wp/s) in {0, 1}, a pasted instance's bank mask M̂' sampled at the mask stride
            (zero rows for the original instances). :func:`~.losses.sim.paste_targets`, mode ``sim``.
        paste_weights: float32 (N, Hp/s, Wp/s), 1 on real image pixels, 0 on padding.
            :func:`~.losses.sim.paste_targets`, mode ``sim``.
        pseudo_labels: float32 (N, Hp/s, Wp/s) in {0, 1}, the pseudo mask M̂ of Eq. 8 (zero rows for pasted
            instances). :func:`~.losses.sim.with_pseudo_masks` in :class:`~.sim.supervisor.SIMSupervisor`'s
            ``after_matching``, mode ``sim``, once SIM has started.
        pseudo_weights: float32 (N, Hp/s, Wp/s) in {0, 1}, the weight map W of Eq. 8 (0 on the ignored band and on
            padding). Set with ``pseudo_labels``.
    """

    labels: torch.Tensor
    boxes: torch.Tensor
    padding_mask: torch.Tensor
    masks: torch.Tensor
    box_masks: torch.Tensor
    color_similarity: torch.Tensor
    pasted: torch.Tensor
    paste_masks: torch.Tensor
    paste_weights: torch.Tensor
    pseudo_labels: torch.Tensor
    pseudo_weights: torch.Tensor


Targets = List[ImageTarget]
Indices = List[Tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class MatchedBatch:
    """What ``after_matching`` may read of the current training iteration, once the queries are matched.

    Attributes:
        images: (B, 3, Hp, Wp) normalised, padded network input.
        batched_inputs: the inputs (after ``prepare_inputs``).
        outputs: the network's outputs (``pred_logits``, ``pred_masks``, ``aux_outputs``, ``mask_features``).
        indices: the student's matches of every head, in the order of :func:`~.criterion.prediction_heads`.
        iteration: the training iteration.
    """

    images: torch.Tensor
    batched_inputs: Sequence[Dict[str, Any]]
    outputs: Dict[str, Any]
    indices: List[Indices]
    iteration: int


class SupervisionPart(nn.Module):
    """One part of a supervision mode's training forward; every method defaults to doing nothing.

    A part is a module so that its state (the pairwise schedule's start, SIM's teacher and prototypes) is saved
    in checkpoints with the model. ``statistics_due`` says whether the scalars of :meth:`statistics` are wanted
    this iteration (measuring them waits for the device; the trainer wants them on logging iterations only).
    """

    statistics_due = True

    def prepare_inputs(self, batched_inputs: List[Dict[str, Any]], iteration: int) -> List[Dict[str, Any]]:
        """The inputs the network sees (new dicts; the given ones are kept)."""
        return batched_inputs

    def build_targets(self, targets: Targets, batched_inputs: Sequence[Dict[str, Any]], iteration: int) -> Targets:
        """``targets`` with what this part's loss families read added."""
        return targets

    def after_matching(self, targets: Targets, batch: MatchedBatch) -> Targets:
        """``targets`` once the queries are matched (e.g. with pseudo masks added)."""
        return targets

    def statistics(self) -> Dict[str, float]:
        """Scalars of the last training forward for the logs (e.g. how well matched masks fit their boxes); empty
        when the forward ran with ``statistics_due`` False."""
        return {}

    def hooks(self, model: nn.Module) -> List[Any]:
        """Trainer hooks this part needs around the optimizer steps of ``model`` (``before_train``,
        ``before_step``, ``after_step``, ``after_train``; e.g. SIM's EMA teacher update)."""
        return []


def image_targets(
    batched_inputs: Sequence[Dict[str, Any]], padded_size: Tuple[int, int], device: torch.device, num_classes: int
) -> Targets:
    """The targets every mode starts from, at the padded input size.

    Args:
        batched_inputs: training inputs (``image``, ``instances`` with ``gt_boxes``, ``gt_classes``; ``padding_mask``
            optional).
        padded_size: (Hp, Wp) of the batch.
        num_classes: K; labels outside ``[0, K)`` are an error naming the input.

    Returns:
        :class:`ImageTarget` dicts with ``labels``, ``boxes`` and ``padding_mask``.
    """
    hp, wp = padded_size
    targets: Targets = []
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
        boxes = inst["gt_boxes"].to(device, dtype=torch.float32).reshape(-1, 4)
        targets.append({"labels": labels, "boxes": boxes, "padding_mask": padding_mask})
    return targets
