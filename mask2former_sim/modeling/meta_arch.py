"""``MaskFormer``: the meta-architecture tying backbone, pixel decoder, transformer decoder and criterion.

Input (detectron2 format), a list of per-image dicts:
``{"image": uint8 (3, H, W) RGB, "height": int, "width": int, "padding_mask": bool (H, W) optional,
"instances": {"gt_boxes": float (N, 4) XYXY, "gt_classes": int64 (N,), "gt_masks": bool (N, H, W)}}``
(``instances`` in training only; ``gt_masks`` read only when ``SUPERVISION`` is ``"mask"``).

Training returns the criterion's losses multiplied by ``criterion.weight_dict``; a loss key without a weight
is an error, not a silent drop. Evaluation returns ``[{"instances": {"pred_masks", "pred_boxes", "scores",
"pred_classes"}}]`` at each image's ("height", "width"), through :mod:`.postprocessing` or, for large images,
the sliding-window inference of :mod:`.sliding_window`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .criterion import matched_logits, matched_rows, prediction_heads
from .postprocessing import instances_at_size, topk_queries
from .supervision import build_criterion, build_supervision
from .targets import Targets, box_targets, image_targets, paste_targets, with_pseudo_masks

__all__ = ["MaskFormer", "apply_loss_weights", "pad_images", "check_supported_choices"]


def apply_loss_weights(losses: Dict[str, torch.Tensor], weight_dict: Dict[str, float]) -> Dict[str, torch.Tensor]:
    """Multiply every loss by its weight; every key must have a weight and every loss must be a scalar.

    Raises:
        KeyError: a loss key is missing from ``weight_dict`` (it would otherwise never train).
        ValueError: a loss is not a scalar tensor.
    """
    missing = sorted(k for k in losses if k not in weight_dict)
    if missing:
        raise KeyError(
            f"losses {missing} have no entry in criterion.weight_dict (keys: {sorted(weight_dict)}); "
            "add their weights where the criterion is built so they are not silently dropped"
        )
    not_scalar = {k: tuple(v.shape) for k, v in losses.items() if not isinstance(v, torch.Tensor) or v.dim() != 0}
    if not_scalar:
        raise ValueError(f"losses must be scalar tensors; found shapes {not_scalar}")
    return {k: v * weight_dict[k] for k, v in losses.items()}


def pad_images(images: Sequence[torch.Tensor], size_divisibility: int) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """Stack (3, H_i, W_i) images into (B, 3, Hp, Wp), zero-padded at the bottom/right (detectron2 ``ImageList``).

    Hp, Wp are the largest H, W rounded up to a multiple of ``size_divisibility`` (no rounding when ≤ 1).

    Returns:
        The batch tensor and the (H_i, W_i) of every image.
    """
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    max_h, max_w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    if size_divisibility > 1:
        max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
        max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
    batch = images[0].new_zeros((len(images), images[0].shape[0], max_h, max_w))
    for out, im in zip(batch, images):
        out[:, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch, sizes


def check_supported_choices(cfg) -> None:
    """Mask2Former config keys that name a choice this project implements one way only must name that way."""
    supported = {
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": (
            cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME,
            "MSDeformAttnPixelDecoder",
        ),
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": (
            cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME,
            "MultiScaleMaskedTransformerDecoder",
        ),
        "MODEL.MASK_FORMER.TEST.INSTANCE_ON": (cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON, True),
        "MODEL.SWIN.PATCH_NORM": (cfg.MODEL.SWIN.PATCH_NORM, True),
    }
    for key, (found, expected) in supported.items():
        if found != expected:
            raise ValueError(f"{key} = {found!r} is not supported: mask2former_sim implements only {expected!r}")


class MaskFormer(nn.Module):
    """Mask2Former for instance segmentation, trained from masks, boxes, or boxes + SIM.

    Args:
        backbone: images (B, 3, H, W) → {"res2", ..., "res5"}.
        pixel_decoder: has ``forward_features(features) -> (mask_features, _, multi_scale_features)``.
        transformer_decoder: ``(multi_scale_features, mask_features) -> outputs`` with ``aux_outputs``.
        criterion: a :class:`~.criterion.SetCriterion` (unweighted losses, a ``weight_dict``).
        supervision: the mode's name ("mask", "box", "sim"; :mod:`.supervision`), for logs and tools.
        num_classes: K; training labels must lie in ``[0, K)``.
        gt_masks: the targets carry GT masks (mask supervision only).
        size_divisibility: pad the batch to a multiple of this.
        pixel_mean, pixel_std: RGB normalisation in 0-255 units.
        deep_supervision: train every head; otherwise the auxiliary outputs are ignored.
        test_topk: detections per image (``TEST.DETECTIONS_PER_IMAGE``).
        sliding_window: kwargs of ``sliding_window_inference`` (tile_size, stride, dedup_iou, border_margin,
            min_score, batch_size) to tile evaluation images, or None.
        box_target_kwargs: kwargs of :func:`~.targets.box_targets` (box and SIM supervision), or None.
        sim: the :class:`~.sim.SIMSupervisor` (teacher, prototypes, pseudo masks, copy-paste), or None.
        pairwise_schedule: the :class:`~.pairwise_schedule.PairwiseSchedule` of box and SIM supervision (it
            watches the final head's matched masks every training step), or None.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_decoder: nn.Module,
        transformer_decoder: nn.Module,
        criterion: nn.Module,
        supervision: str,
        num_classes: int,
        gt_masks: bool,
        size_divisibility: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        deep_supervision: bool = True,
        test_topk: int = 100,
        sliding_window: Optional[Dict[str, Any]] = None,
        box_target_kwargs: Optional[Dict[str, Any]] = None,
        sim: Optional[nn.Module] = None,
        pairwise_schedule: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        if sim is not None and box_target_kwargs is None:
            raise ValueError("SIM needs box targets: give box_target_kwargs with the SIMSupervisor")
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.criterion = criterion
        self.supervision = supervision
        self.num_classes = num_classes
        self.gt_masks = gt_masks
        self.size_divisibility = size_divisibility
        self.deep_supervision = deep_supervision
        self.test_topk = test_topk
        self.sliding_window = dict(sliding_window) if sliding_window else None
        self.box_target_kwargs = dict(box_target_kwargs) if box_target_kwargs else None
        self.sim = sim
        self.pairwise_schedule = pairwise_schedule
        self._statistics: Dict[str, float] = {}
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        # the iteration of the last training forward, saved with the weights (tools read it to reproduce the
        # losses of a checkpoint); the trainer passes the iteration to every forward
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    @classmethod
    def from_config(cls, cfg) -> "MaskFormer":
        from .backbone import build_backbone
        from .pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder
        from .transformer_decoder import MultiScaleMaskedTransformerDecoder

        check_supported_choices(cfg)
        backbone = build_backbone(cfg)
        pixel_decoder = MSDeformAttnPixelDecoder.from_config(cfg, backbone.output_shape())
        transformer_decoder = MultiScaleMaskedTransformerDecoder.from_config(cfg, cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM)
        sw = cfg.TEST.SLIDING_WINDOW
        sliding_window = None
        if sw.ENABLED:
            sliding_window = {
                "tile_size": sw.TILE_SIZE,
                "stride": sw.STRIDE,
                "dedup_iou": sw.DEDUP_IOU,
                "border_margin": sw.BORDER_MARGIN,
                "min_score": sw.MIN_SCORE,
                "batch_size": sw.BATCH_SIZE,
            }
        supervision = build_supervision(cfg)
        sim = None
        if supervision.sim:
            from .sim import SIMSupervisor

            sim = SIMSupervisor.from_config(
                cfg, backbone, pixel_decoder, transformer_decoder, supervision.pairwise_schedule
            )
        mf = cfg.MODEL.MASK_FORMER
        return cls(
            backbone=backbone,
            pixel_decoder=pixel_decoder,
            transformer_decoder=transformer_decoder,
            criterion=build_criterion(cfg, supervision),
            supervision=supervision.mode,
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            gt_masks=supervision.gt_masks,
            size_divisibility=mf.SIZE_DIVISIBILITY,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            deep_supervision=mf.DEEP_SUPERVISION,
            test_topk=cfg.TEST.DETECTIONS_PER_IMAGE,
            sliding_window=sliding_window,
            box_target_kwargs=supervision.box_target_kwargs,
            sim=sim,
            pairwise_schedule=supervision.pairwise_schedule,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def current_iter(self) -> int:
        """The iteration of the last training forward (or of the loaded checkpoint)."""
        return int(self.iteration.item())

    def student_parts(self) -> List[nn.Module]:
        """The networks the SIM teacher copies: backbone, pixel decoder, transformer decoder."""
        return [self.backbone, self.pixel_decoder, self.transformer_decoder]

    def init_teacher(self) -> None:
        """SIM: make the teacher a copy of the student unless it already is one (or comes from a checkpoint).
        Done by the first training forward, after the trainer has loaded the weights."""
        if self.sim is not None:
            self.sim.init_teacher(self.student_parts())

    def after_optimizer_step(self) -> None:
        """Called by the trainer after every optimizer step: the SIM teacher's EMA update (nothing otherwise)."""
        if self.sim is not None:
            self.sim.update_teacher(self.student_parts())

    def preprocess_images(self, batched_inputs: List[Dict[str, Any]]) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """Normalised, zero-padded batch (B, 3, Hp, Wp) and the (H, W) of every image."""
        images = []
        for i, x in enumerate(batched_inputs):
            image = x["image"]
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"input {i}: 'image' must be a (3, H, W) RGB tensor, found shape {tuple(image.shape)}")
            images.append((image.to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std)
        return pad_images(images, self.size_divisibility)

    def forward_network(self, images: torch.Tensor, all_heads: bool = True) -> Dict[str, Any]:
        """Backbone → pixel decoder → transformer decoder on a padded batch (B, 3, Hp, Wp).

        Returns the transformer decoder's outputs (``pred_logits``, ``pred_masks``, ``aux_outputs``: empty
        unless ``all_heads``) and the pixel decoder's ``mask_features`` (B, D, Hp/4, Wp/4).
        """
        features = self.backbone(images)
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        outputs = self.transformer_decoder(multi_scale_features, mask_features, all_heads=all_heads)
        outputs["mask_features"] = mask_features
        return outputs

    def build_targets(self, batched_inputs: List[Dict[str, Any]], padded_size: Tuple[int, int]) -> Targets:
        """The targets of a training batch (:mod:`.targets`), everything but SIM's pseudo masks."""
        targets = image_targets(batched_inputs, padded_size, self.device, self.num_classes, self.gt_masks)
        if self.box_target_kwargs is not None:
            raw_images, _ = pad_images(
                [x["image"].to(self.device).float() for x in batched_inputs], self.size_divisibility
            )
            targets = box_targets(targets, raw_images, **self.box_target_kwargs)
        if self.sim is not None:
            targets = paste_targets(targets, batched_inputs, self.box_target_kwargs["stride"])
        return targets

    def forward(self, batched_inputs: List[Dict[str, Any]], iteration: Optional[int] = None):
        """Weighted losses (training) or per-image instances (evaluation); see the module docstring.

        Args:
            batched_inputs: detectron2-format inputs.
            iteration: the training iteration (the trainer passes it; default: :attr:`current_iter`).
        """
        if not self.training:
            return self.predict(batched_inputs)
        iteration = self.current_iter if iteration is None else int(iteration)
        self.iteration.fill_(iteration)
        if self.sim is not None:
            self.init_teacher()  # no-op once initialised (or restored from a checkpoint)
            batched_inputs = self.sim.paste(batched_inputs, iteration)
        images, _ = self.preprocess_images(batched_inputs)
        outputs = self.forward_network(images)
        if not self.deep_supervision:
            outputs.pop("aux_outputs", None)
        targets = self.build_targets(batched_inputs, tuple(images.shape[-2:]))
        indices = None
        self._statistics = {}
        if self.pairwise_schedule is not None:
            indices = self.criterion.match(outputs, targets)
            self._statistics.update(self.observe_box_fit(outputs, targets, indices[0], iteration))
        if self.sim is not None:
            result = self.sim(images, batched_inputs, targets, indices, iteration, outputs["mask_features"])
            targets = with_pseudo_masks(targets, result.pseudo)
            self._statistics.update({f"sim/{k}": v for k, v in (result.stats or {}).items()})
        losses = self.criterion(outputs, targets, indices, iteration)
        return apply_loss_weights(losses, self.criterion.weight_dict)

    def observe_box_fit(
        self,
        outputs: Dict[str, Any],
        targets: Targets,
        indices: List[Tuple[torch.Tensor, torch.Tensor]],
        iteration: int,
    ) -> Dict[str, float]:
        """The final head's matched masks against their boxes, given to the pairwise schedule (which may start the
        pairwise warm-up on them); returns the statistics it logs."""
        final = prediction_heads(outputs)[0][1]
        return self.pairwise_schedule.observe(
            iteration,
            matched_logits(final["pred_masks"], indices),
            matched_rows(targets, indices, "boxes"),
            matched_rows(targets, indices, "box_masks"),
            self.box_target_kwargs["stride"],
        )

    def training_statistics(self) -> Dict[str, float]:
        """Scalars of the last training forward besides the losses (box fit of the matched masks, the pairwise
        factor, SIM's teacher statistics at logging iterations), for metrics.json and TensorBoard."""
        return dict(self._statistics)

    @torch.inference_mode()
    def predict(
        self, batched_inputs: List[Dict[str, Any]], score_threshold: float = 0.0
    ) -> List[Dict[str, Dict[str, torch.Tensor]]]:
        """Per-image instances at ("height", "width"): :meth:`inference` or, when configured, the sliding window.

        With ``score_threshold`` > 0 only the instances scoring at least that are returned, and only their masks
        are brought to the image size (the sliding window drops the others before pasting its masks), so memory
        does not grow with the number of queries (a score is class probability × mask score, so a class
        probability below the threshold cannot pass).
        """
        if self.sliding_window is None:
            return self.inference(batched_inputs, score_threshold)
        return self.sliding_window_inference(batched_inputs, score_threshold)

    @torch.inference_mode()
    def inference(
        self, batched_inputs: List[Dict[str, Any]], score_threshold: float = 0.0
    ) -> List[Dict[str, Dict[str, torch.Tensor]]]:
        """Per-image instances at ("height", "width") (default: the input image size); see :meth:`predict`."""
        images, image_sizes = self.preprocess_images(batched_inputs)
        outputs = self.forward_network(images, all_heads=False)
        padded_size = tuple(images.shape[-2:])
        results = []
        for i, (x, image_size) in enumerate(zip(batched_inputs, image_sizes)):
            output_size = (int(x.get("height", image_size[0])), int(x.get("width", image_size[1])))
            scores, labels, query_idx = topk_queries(outputs["pred_logits"][i], self.test_topk)
            if score_threshold > 0:
                keep = scores >= score_threshold
                scores, labels, query_idx = scores[keep], labels[keep], query_idx[keep]
            mask_logits = outputs["pred_masks"][i][query_idx]
            instances = instances_at_size(mask_logits, scores, labels, padded_size, image_size, output_size)
            if score_threshold > 0:
                keep = instances["scores"] >= score_threshold
                instances = {k: v[keep] for k, v in instances.items()}
            results.append({"instances": instances})
        return results

    @torch.inference_mode()
    def sliding_window_inference(
        self, batched_inputs: List[Dict[str, Any]], score_threshold: float = 0.0
    ) -> List[Dict[str, Dict[str, torch.Tensor]]]:
        """Tile every image, run :meth:`inference` on the tiles and merge (``TEST.SLIDING_WINDOW``); merged
        instances scoring below ``score_threshold`` are dropped before their masks are pasted."""
        from .sliding_window import sliding_window_inference

        results = []
        for x in batched_inputs:
            height = int(x.get("height", x["image"].shape[-2]))
            width = int(x.get("width", x["image"].shape[-1]))
            # tile instances below min_score are dropped by the merge: do not resize their masks at all
            infer = functools.partial(self.inference, score_threshold=self.sliding_window.get("min_score", 0.0))
            instances = sliding_window_inference(
                infer,
                x["image"],
                height,
                width,
                max_dets=self.test_topk,
                score_threshold=score_threshold,
                **self.sliding_window,
            )
            results.append({"instances": instances})
        return results
