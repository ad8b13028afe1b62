"""``SIMSupervisor``: the SIM module of Figure 2, owned by ``MaskFormer`` in ``SUPERVISION sim``.

One training iteration (SPEC §5-6):

1. :meth:`paste` — copy-paste bank instances onto the batch (before the student forward; from ``START_ITER``).
2. the student forward, targets, box masks (``MaskFormer``); :meth:`add_paste_targets` adds the pasted flags,
   the pasted instances' masks and carves the pasted pixels out of the occluded originals' box masks.
3. the student's Hungarian matching at every head (``SetCriterion.match``).
4. :meth:`forward` — the teacher forward (no grad), the pseudo masks of every original GT (Eq. 1, 6, 7) added to
   the targets from ``START_ITER`` on, the bank filled with them (at input resolution), and the prototype
   update (Eq. 2-5) every iteration from the student's features at the pseudo-foreground pixels (before
   ``START_ITER`` the pixels with ``M_I > INSTANCE_MAP_THRESH`` inside the box).
5. the losses (:mod:`.criterion`), then after the optimizer step :meth:`update_teacher` (EMA).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..criterion import prediction_heads
from .memory_bank import MemoryBank, box_raster, num_instances_to_paste, paste_instances, place, sample_instances
from .prototypes import PrototypeBank, semantic_map
from .pseudo_masks import (
    dynamic_tau_high,
    full_resolution_pseudo_masks,
    fuse_maps,
    gather_positives,
    instance_maps,
    mask_box_iou,
    mask_score,
    threshold_pseudo_mask,
)
from .teacher import EMATeacher

__all__ = ["SIMSupervisor"]

logger = logging.getLogger(__name__)

Indices = List[Tuple[torch.Tensor, torch.Tensor]]
POSITIVES = ("all_heads", "last_head")


class SIMSupervisor(nn.Module):
    """Teacher, prototypes, pseudo-mask generation and copy-paste of SIM.

    Args:
        backbone, pixel_decoder, transformer_decoder: the student's modules (the teacher copies them).
        num_classes: C; mask_dim: D (``mask_features`` channels); stride: mask stride (4).
        ema_momentum: teacher momentum (0.9999).
        num_prototypes, proto_momentum, proto_temperature, sinkhorn_iters, sinkhorn_epsilon: Eq. 1-5.
        iou_mu: μ of Eq. 6; alpha: α of Eq. 7; tau_low, tau_high: pseudo-label thresholds.
        dynamic_tau_high: per-instance τ_high clamped to ``dynamic_tau_range`` (official code).
        instance_map_thresh: M_I threshold for prototype pixels before START_ITER and for the dynamic τ_high.
        positives: "all_heads" (matched query of each head) or "last_head".
        start_iter: first iteration with the pseudo and paste losses.
        copy_paste: None (off) or ``{"memory_length", "prob", "fraction", "min_inst", "max_inst",
            "score_power"}``.
        log_period: every this many iterations, log the teacher's quality (``stats``); 0 = never.

    ``stats`` (updated every ``log_period`` iterations) holds ``teacher_box_iou``, the mean IoU between each GT
    box and the box of its instance map ``M_I > 0.5`` (how well the teacher's masks fit the boxes: it must rise
    before START_ITER), ``teacher_box_fill`` (the share of the GT box that ``M_I > 0.5`` covers; an outline fits
    the box but fills little of it), ``pseudo_fg_fraction`` (foreground share of the pseudo masks inside the
    boxes) and ``bank_size``.
    """

    def __init__(
        self, *, backbone: nn.Module, pixel_decoder: nn.Module, transformer_decoder: nn.Module, num_classes: int,
        mask_dim: int, stride: int, ema_momentum: float, num_prototypes: int, proto_momentum: float,
        proto_temperature: float, sinkhorn_iters: int, sinkhorn_epsilon: float, iou_mu: float, alpha: float,
        tau_low: float, tau_high: float, dynamic_tau_high: bool, dynamic_tau_range: Sequence[float],
        instance_map_thresh: float, positives: str, start_iter: int, copy_paste: Optional[Dict[str, Any]],
        log_period: int = 0,
    ) -> None:
        super().__init__()
        if positives not in POSITIVES:
            raise ValueError(f"MODEL.SIM.POSITIVES must be one of {POSITIVES}, found {positives!r}")
        if not 0.0 <= tau_low <= tau_high <= 1.0:
            raise ValueError(f"MODEL.SIM.TAU_LOW / TAU_HIGH must satisfy 0 <= low <= high <= 1, found "
                             f"{tau_low} / {tau_high}")
        self.teacher = EMATeacher(backbone=backbone, pixel_decoder=pixel_decoder,
                                  transformer_decoder=transformer_decoder, momentum=ema_momentum)
        self.prototypes = PrototypeBank(num_classes=num_classes, num_prototypes=num_prototypes, dim=mask_dim,
                                        momentum=proto_momentum, sinkhorn_iters=sinkhorn_iters,
                                        sinkhorn_epsilon=sinkhorn_epsilon)
        self.stride = stride
        self.proto_temperature = proto_temperature
        self.iou_mu = iou_mu
        self.alpha = alpha
        self.tau_low = tau_low
        self.tau_high = tau_high
        self.dynamic_tau_high = dynamic_tau_high
        self.dynamic_tau_range = tuple(float(v) for v in dynamic_tau_range)
        self.instance_map_thresh = instance_map_thresh
        self.positives = positives
        self.start_iter = start_iter
        self.copy_paste = dict(copy_paste) if copy_paste else None
        self.bank = MemoryBank(self.copy_paste["memory_length"]) if self.copy_paste else None
        self.log_period = log_period
        self.stats: Dict[str, float] = {}

    @classmethod
    def from_config(cls, cfg, backbone: nn.Module, pixel_decoder: nn.Module,
                    transformer_decoder: nn.Module) -> "SIMSupervisor":
        sim, cp = cfg.MODEL.SIM, cfg.MODEL.SIM.COPY_PASTE
        copy_paste = None
        if cp.ENABLED:
            copy_paste = {"memory_length": cp.MEMORY_LENGTH, "prob": cp.PROB, "fraction": cp.FRACTION,
                          "min_inst": cp.MIN_INST, "max_inst": cp.MAX_INST, "score_power": cp.SCORE_POWER}
        return cls(
            backbone=backbone, pixel_decoder=pixel_decoder, transformer_decoder=transformer_decoder,
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, mask_dim=cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            stride=cfg.MODEL.BOXINST.MASK_STRIDE, ema_momentum=sim.EMA_MOMENTUM, num_prototypes=sim.NUM_PROTOTYPES,
            proto_momentum=sim.PROTO_MOMENTUM, proto_temperature=sim.PROTO_TEMPERATURE,
            sinkhorn_iters=sim.SINKHORN_ITERS, sinkhorn_epsilon=sim.SINKHORN_EPSILON, iou_mu=sim.IOU_MU,
            alpha=sim.ALPHA, tau_low=sim.TAU_LOW, tau_high=sim.TAU_HIGH, dynamic_tau_high=sim.DYNAMIC_TAU_HIGH,
            dynamic_tau_range=sim.DYNAMIC_TAU_RANGE, instance_map_thresh=sim.INSTANCE_MAP_THRESH,
            positives=sim.POSITIVES, start_iter=sim.START_ITER, copy_paste=copy_paste, log_period=cfg.LOG_PERIOD,
        )

    def started(self, iteration: int) -> bool:
        """Whether the pseudo and paste losses are on (``iteration >= START_ITER``)."""
        return iteration >= self.start_iter

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
        """With probability PROB per image, paste instances of a random bank entry (new dicts; inputs kept)."""
        if self.bank is None or len(self.bank) == 0 or not self.started(iteration):
            return batched_inputs
        cp = self.copy_paste
        out = []
        for x in batched_inputs:
            if float(torch.rand(())) >= cp["prob"]:
                out.append(x)
                continue
            entry = self.bank.sample()
            k = num_instances_to_paste(len(entry["classes"]), cp["fraction"], cp["min_inst"], cp["max_inst"])
            chosen = sample_instances(entry["scores"], k, cp["score_power"])
            image = x["image"].cpu()
            padding = x.get("padding_mask")
            padding = torch.zeros(image.shape[-2:], dtype=torch.bool) if padding is None else padding.cpu().bool()
            inst = x["instances"]
            pasted = paste_instances(image, padding, inst["gt_boxes"].cpu(), inst["gt_classes"].cpu(), entry, chosen)
            new_inst = {k2: v for k2, v in inst.items() if k2 not in ("gt_boxes", "gt_classes")}
            new_inst.update(gt_boxes=pasted["boxes"], gt_classes=pasted["classes"], pasted=pasted["pasted"],
                            paste_masks=pasted["paste_masks"], paste_occlusion=pasted["occlusion"])
            out.append({**x, "image": pasted["image"], "instances": new_inst})
        return out

    @torch.no_grad()
    def add_paste_targets(self, targets: List[Dict[str, torch.Tensor]], batched_inputs: List[Dict[str, Any]]) -> None:
        """Add ``pasted`` (N,), ``paste_masks`` (N, h, w), ``valid_mask`` (h, w) to every target and remove the
        pasted pixels from the originals' ``box_masks`` (call after ``add_box_targets``)."""
        s, off = self.stride, self.stride // 2
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
                box_masks[~pasted] = box_masks[~pasted] * (~occlusion).to(box_masks)
            target["pasted"] = pasted
            target["paste_masks"] = paste_masks
            target["valid_mask"] = ~target["padding_mask"][off::s, off::s]

    # ------------------------------------------------------------------------------------------ pseudo masks
    @torch.no_grad()
    def pseudo_masks(
        self, teacher_outputs: Dict[str, Any], targets: List[Dict[str, torch.Tensor]],
        indices_per_head: Sequence[Indices],
    ) -> List[Dict[str, Any]]:
        """Eq. 1, 6, 7 for every non-pasted GT of every image.

        Returns:
            per image ``{"gt": (K,) GT indices, "semantic", "instance", "prob", "labels", "weights", "region"
            (box ∧ ¬padding), "box_masks": (K, h, w), "tau_high": (K,), "positives": K lists of (head, query,
            weight)}``.
        """
        heads = [head for _, head in prediction_heads(teacher_outputs)][: len(indices_per_head)]
        head_ids = list(range(len(heads))) if self.positives == "all_heads" else [0]
        features = F.normalize(teacher_outputs["mask_features"].float(), dim=1)
        protos = self.prototypes.prototypes
        results = []
        device = features.device
        for b, target in enumerate(targets):
            pasted = target.get("pasted")
            gt_list = list(range(len(target["labels"])))
            if pasted is not None:
                gt_list = [k for k, is_pasted in enumerate(pasted.tolist()) if not is_pasted]
            gts = torch.tensor(gt_list, dtype=torch.int64, device=device)
            valid = ~target["padding_mask"][self.stride // 2 :: self.stride, self.stride // 2 :: self.stride]
            # Eq. 6 for all GTs at once: positives ordered by head, so one gather per head
            triples = gather_positives(indices_per_head, b, gt_list, head_ids)
            queries = {hd: torch.tensor([q for h, q, _ in triples if h == hd], dtype=torch.int64, device=device)
                       for hd in head_ids}
            probs = torch.cat([heads[hd]["pred_masks"][b, queries[hd]].float() for hd in head_ids]).sigmoid()
            group = torch.tensor([k for _, _, k in triples], dtype=torch.int64, device=device)
            weights, inst = instance_maps(probs, target["boxes"][gts][group], group, len(gt_list), self.stride,
                                          self.iou_mu)
            positives: List[List[Tuple[int, int, float]]] = [[] for _ in gt_list]
            for (hd, q, k), wt in zip(triples, weights.tolist()):
                positives[k].append((hd, q, wt))
            box_masks = target["box_masks"][gts].float()
            classes, class_row = target["labels"][gts].unique(return_inverse=True)  # one map per class present
            sem = semantic_map(features[b], protos[classes], self.proto_temperature)[class_row]
            prob = fuse_maps(sem, inst, self.alpha)
            if self.dynamic_tau_high:
                tau_high = dynamic_tau_high(prob, inst, box_masks, self.instance_map_thresh, *self.dynamic_tau_range)
            else:
                tau_high = prob.new_full((len(gts),), self.tau_high)
            region = (box_masks > 0) & valid  # outside its box a pixel is ignored by the pseudo loss (SPEC §5)
            labels, weights = threshold_pseudo_mask(prob, self.tau_low, tau_high, region)
            results.append({"gt": gts, "semantic": sem, "instance": inst, "prob": prob, "labels": labels,
                            "weights": weights, "tau_high": tau_high, "positives": positives,
                            "region": region, "box_masks": box_masks})
        return results

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, batched_inputs: List[Dict[str, Any]], targets: List[Dict[str, torch.Tensor]],
        indices_per_head: Sequence[Indices], iteration: int, student_features: torch.Tensor,
    ) -> None:
        """Teacher forward, pseudo masks into ``targets`` (from START_ITER), bank push, prototype update.

        ``student_features`` (B, D, h, w) are the student's ``mask_features`` Z: the prototypes' centroids
        (Eq. 2-5) come from Z, the semantic map M_S (Eq. 1) from the teacher's Z' (Fig. 2; the official code).
        """
        teacher_outputs = self.teacher(images)
        results = self.pseudo_masks(teacher_outputs, targets, indices_per_head)
        started = self.started(iteration)
        if self.log_period > 0 and (iteration + 1) % self.log_period == 0:
            self._log_stats(targets, results, iteration)
        student_features = F.normalize(student_features.detach().float(), dim=1)
        pixel_sets = []
        for b, (target, res) in enumerate(zip(targets, results)):
            gts, labels = res["gt"], res["labels"]
            if started:
                n, (h, w) = len(target["labels"]), labels.shape[-2:]
                target["pseudo_labels"] = labels.new_zeros(n, h, w)
                target["pseudo_weights"] = labels.new_zeros(n, h, w)
                target["pseudo_labels"][gts] = labels
                target["pseudo_weights"][gts] = res["weights"]
                foreground = labels > 0
                self._push_to_bank(batched_inputs[b], target, res)
            else:
                foreground = (res["instance"] > self.instance_map_thresh) & res["region"]
            classes = target["labels"][gts]
            for c in classes.unique().tolist():
                pixels = foreground[classes == c].any(0)
                pixel_sets.append((c, student_features[b][:, pixels].T))
        self.prototypes.update(pixel_sets)

    def _log_stats(self, targets: List[Dict[str, torch.Tensor]], results: List[Dict[str, Any]],
                   iteration: int) -> None:
        """Every LOG_PERIOD iterations: how well the teacher's masks fit their boxes, into ``stats`` and the log."""
        ious, fill, fg = [], [], []
        for target, res in zip(targets, results):
            if len(res["gt"]) == 0:
                continue
            ious.append(mask_box_iou(res["instance"], target["boxes"][res["gt"]], self.stride))
            inside = res["box_masks"].flatten(1).sum(1).clamp_min(1)
            fill.append(((res["instance"] > 0.5) & (res["box_masks"] > 0)).flatten(1).sum(1) / inside)
            fg.append(res["labels"].flatten(1).sum(1) / inside)
        self.stats = {
            "teacher_box_iou": float(torch.cat(ious).mean()) if ious else float("nan"),
            # an outline has the box of the object but fills little of it: box IoU alone hides that collapse
            "teacher_box_fill": float(torch.cat(fill).mean()) if fill else float("nan"),
            "pseudo_fg_fraction": float(torch.cat(fg).mean()) if fg else float("nan"),
            "bank_size": float(len(self.bank)) if self.bank is not None else 0.0,
        }
        logger.info("SIM iter %d: teacher box IoU %.3f, box fill %.3f, pseudo foreground %.3f, bank %d (%s)",
                    iteration, self.stats["teacher_box_iou"], self.stats["teacher_box_fill"],
                    self.stats["pseudo_fg_fraction"], self.stats["bank_size"],
                    "pseudo and paste losses on" if self.started(iteration) else "warm-up: box losses only")

    def _push_to_bank(self, x: Dict[str, Any], target: Dict[str, torch.Tensor], res: Dict[str, Any]) -> None:
        """Store the image with its instances that have pseudo foreground, their pseudo masks at input resolution
        (inside the box raster, minus pasted occluders and padding) and their scores (Eq. 11)."""
        if self.bank is None:
            return
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
        masks = full_resolution_pseudo_masks(res["prob"][keep].cpu(), res["tau_high"][keep].cpu(), region,
                                             self.stride)
        self.bank.push({
            "image": image, "padding_mask": padding, "boxes": target["boxes"][gts],
            "classes": target["labels"][gts], "masks": masks,
            "scores": mask_score(res["prob"][keep], res["labels"][keep]),
        })

    def extra_repr(self) -> str:
        return (f"start_iter={self.start_iter}, alpha={self.alpha}, tau=({self.tau_low}, {self.tau_high}), "
                f"dynamic_tau_high={self.dynamic_tau_high}, positives={self.positives}, "
                f"copy_paste={'on' if self.copy_paste else 'off'}")
