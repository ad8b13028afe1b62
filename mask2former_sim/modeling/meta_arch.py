"""``MaskFormer``: the meta-architecture tying backbone, pixel decoder, transformer decoder and criterion.

Input (detectron2 format), a list of per-image dicts:
``{"image": uint8 (3, H, W) RGB, "height": int, "width": int, "padding_mask": bool (H, W) optional,
"instances": {"gt_boxes": float (N, 4) XYXY, "gt_classes": int64 (N,), "gt_masks": bool (N, H, W)}}``
(``instances`` in training only; ``gt_masks`` read only when ``SUPERVISION`` is ``"mask"``).

Training runs one path in every supervision mode (as Mask2Former's ``MaskFormer.forward``): inputs → features →
predictions → targets → matching → losses; what a mode adds happens in its :class:`~.supervision.Supervision`
parts (:mod:`.targets`). It returns the criterion's losses multiplied by ``criterion.weight_dict``; a loss key
without a weight is an error, not a silent drop. Evaluation returns ``[{"instances": {"pred_masks", "pred_boxes",
"scores", "pred_classes"}}]`` at each image's ("height", "width"), through :mod:`.postprocessing` or, for large
images, the sliding-window inference of :mod:`.sliding_window`.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..config.checks import check_supported_choices
from ..utils.profiling import stage
from .backbone import build_backbone
from .image_list import pad_images
from .pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder
from .postprocessing import instances_at_size, topk_queries
from .sliding_window import sliding_window_inference
from .supervision import Supervision, build_criterion, build_supervision
from .targets import MatchedBatch, Targets
from .transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = ["MaskFormer", "apply_loss_weights"]


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


class MaskFormer(nn.Module):
    """Mask2Former for instance segmentation, trained from masks, boxes, or boxes + SIM.

    Args:
        backbone: images (B, 3, H, W) → {"res2", ..., "res5"}.
        pixel_decoder: has ``forward_features(features) -> (mask_features, _, multi_scale_features)``.
        transformer_decoder: ``(multi_scale_features, mask_features) -> outputs`` with ``aux_outputs``.
        supervision: the mode's :class:`~.supervision.Supervision` (its parts and their state); None for a model
            built for inference only (no teacher, bank or prototypes; a training forward is then an error).
        criterion: a :class:`~.criterion.SetCriterion` (unweighted losses, a ``weight_dict``); None with
            ``supervision``.
        num_classes: K; training labels must lie in ``[0, K)``.
        size_divisibility: pad the batch to a multiple of this.
        pixel_mean, pixel_std: RGB normalisation in 0-255 units.
        deep_supervision: train every head; otherwise the auxiliary outputs are ignored.
        test_topk: detections per image (``TEST.DETECTIONS_PER_IMAGE``).
        sliding_window: kwargs of ``sliding_window_inference`` (tile_size, stride, dedup_iou, border_margin,
            min_score, batch_size) to tile evaluation images, or None.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_decoder: nn.Module,
        transformer_decoder: nn.Module,
        supervision: Optional[Supervision],
        criterion: Optional[nn.Module],
        num_classes: int,
        size_divisibility: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        deep_supervision: bool = True,
        test_topk: int = 100,
        sliding_window: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.supervision = supervision
        self.criterion = criterion
        self.num_classes = num_classes
        self.size_divisibility = size_divisibility
        self.deep_supervision = deep_supervision
        self.test_topk = test_topk
        self.sliding_window = dict(sliding_window) if sliding_window else None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg, training: bool = True) -> "MaskFormer":
        """The model of ``cfg``; with ``training`` False the network alone (inference: predictor, demo,
        evaluation-only, export), without the supervision's state and criterion."""
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
        supervision = build_supervision(cfg, backbone, pixel_decoder, transformer_decoder) if training else None
        mf = cfg.MODEL.MASK_FORMER
        return cls(
            backbone=backbone,
            pixel_decoder=pixel_decoder,
            transformer_decoder=transformer_decoder,
            supervision=supervision,
            criterion=build_criterion(cfg, supervision) if training else None,
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            size_divisibility=mf.SIZE_DIVISIBILITY,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            deep_supervision=mf.DEEP_SUPERVISION,
            test_topk=cfg.TEST.DETECTIONS_PER_IMAGE,
            sliding_window=sliding_window,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

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
        with stage("backbone"):
            features = self.backbone(images)
        with stage("pixel decoder"):
            mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        with stage("transformer decoder"):
            outputs = self.transformer_decoder(multi_scale_features, mask_features, all_heads=all_heads)
        outputs["mask_features"] = mask_features
        return outputs

    def forward(self, batched_inputs: List[Dict[str, Any]], iteration: Optional[int] = None):
        """Weighted losses (training) or per-image instances (evaluation); see the module docstring.

        Args:
            batched_inputs: detectron2-format inputs.
            iteration: the training iteration (required in training: schedules and warm-ups read it).
        """
        if not self.training:
            return self.predict(batched_inputs)
        if iteration is None:
            raise ValueError("a training forward needs the iteration: model(batched_inputs, iteration=i)")
        batch, targets = self.matched_targets(batched_inputs, iteration)
        with stage("losses"):
            losses = self.criterion(batch.outputs, targets, batch.indices, iteration)
        return apply_loss_weights(losses, self.criterion.weight_dict)

    def matched_targets(self, batched_inputs: List[Dict[str, Any]], iteration: int) -> Tuple[MatchedBatch, Targets]:
        """A training forward up to the losses: the supervision's inputs, the network's outputs, the targets and
        the Hungarian matches of every head, with the supervision's work after matching done (what the criterion
        gets; the visualisers read it)."""
        if self.supervision is None:
            raise RuntimeError(
                "this model was built for inference (build_model(cfg, training=False)): it has no supervision to "
                "train with; build it with build_model(cfg)"
            )
        batched_inputs = self.supervision.prepare_inputs(batched_inputs, iteration)
        images, _ = self.preprocess_images(batched_inputs)
        outputs = self.forward_network(images)
        if not self.deep_supervision:
            outputs.pop("aux_outputs", None)
        padded_size = tuple(images.shape[-2:])
        targets = self.supervision.build_targets(batched_inputs, padded_size, self.device, self.num_classes, iteration)
        with stage("Hungarian matching"):
            indices = self.criterion.match(outputs, targets)
        batch = MatchedBatch(images, batched_inputs, outputs, indices, iteration)
        return batch, self.supervision.after_matching(targets, batch)

    def training_statistics(self) -> Dict[str, float]:
        """Scalars of the last training forward besides the losses (the matched masks' fit to their boxes, the
        pairwise factor, SIM's teacher statistics), for metrics.json and TensorBoard."""
        return self.supervision.statistics() if self.supervision is not None else {}

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
