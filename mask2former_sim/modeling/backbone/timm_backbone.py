"""``TimmBackbone``: a timm ``features_only`` model returning ``res2..res5`` (strides 4/8/16/32, NCHW).

Supported: ResNet-18/50/101, Swin-T/S/B/L and ``tf_efficientnet_lite0`` (any timm model whose feature pyramid
has strides 4, 8, 16 and 32 works). Mask2Former's detectron2 names map onto timm models:
``build_resnet_backbone`` + ``MODEL.RESNETS.DEPTH`` → ``resnet{DEPTH}``; ``D2SwinTransformer`` +
``MODEL.SWIN.{EMBED_DIM, DEPTHS, NUM_HEADS, WINDOW_SIZE, PRETRAIN_IMG_SIZE, ...}`` → timm's ``SwinTransformer``.

Stochastic depth: a Swin backbone takes ``MODEL.SWIN.DROP_PATH_RATE`` (Mask2Former's key, 0.3 in its configs);
every other backbone takes ``MODEL.BACKBONE.DROP_PATH_RATE``. As Mask2Former's D2SwinTransformer, a Swin
backbone normalises each returned feature with its own LayerNorm.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn

from ...layers.shape_spec import ShapeSpec
from .fold_frozen_bn import fold_frozen_batch_norms

__all__ = ["TimmBackbone", "freeze_batch_norm", "resolve_backbone_name", "timm_kwargs_from_config"]

logger = logging.getLogger(__name__)

FEATURE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}

# (EMBED_DIM, DEPTHS) of the official Swin variants → timm model family
_SWIN_VARIANTS = {
    (96, (2, 2, 6, 2)): "swin_tiny",
    (96, (2, 2, 18, 2)): "swin_small",
    (128, (2, 2, 18, 2)): "swin_base",
    (192, (2, 2, 18, 2)): "swin_large",
}


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every batch norm by a frozen one with the same statistics, affine and eps (timm's converter).

    timm's ``BatchNormAct2d`` (EfficientNet, …) carries its activation; it becomes ``FrozenBatchNormAct2d``, which
    keeps it (a plain ``FrozenBatchNorm2d`` would silently drop the activation). Returns the converted module.
    """
    return freeze_batch_norm_2d(module)


def is_swin(name: str) -> bool:
    """True for Swin backbone names (timm ``swin_*`` or detectron2 ``D2SwinTransformer``)."""
    return name == "D2SwinTransformer" or name.startswith("swin")


def resolve_backbone_name(cfg) -> str:
    """The timm model name for ``MODEL.BACKBONE.NAME`` (detectron2 names resolved through RESNETS/SWIN keys)."""
    name = cfg.MODEL.BACKBONE.NAME
    if name == "build_resnet_backbone":
        depth = cfg.MODEL.RESNETS.DEPTH
        if depth not in (18, 34, 50, 101, 152):
            raise ValueError(f"MODEL.RESNETS.DEPTH must be one of 18, 34, 50, 101, 152, got {depth}")
        return f"resnet{depth}"
    if name == "D2SwinTransformer":
        swin = cfg.MODEL.SWIN
        family = _SWIN_VARIANTS.get((swin.EMBED_DIM, tuple(swin.DEPTHS)), "swin_tiny")
        # a timm entry point of the family; timm_kwargs_from_config passes the whole geometry (embed dim, depths,
        # heads, window, image size), so any consistent MODEL.SWIN geometry builds
        return f"{family}_patch4_window7_224"
    return name


def timm_kwargs_from_config(cfg) -> Dict[str, Any]:
    """Extra ``timm.create_model`` arguments for the configured backbone (drop path, Swin geometry)."""
    name = cfg.MODEL.BACKBONE.NAME
    if not is_swin(name):
        return {"drop_path_rate": cfg.MODEL.BACKBONE.DROP_PATH_RATE}
    swin = cfg.MODEL.SWIN
    kwargs: Dict[str, Any] = {"drop_path_rate": swin.DROP_PATH_RATE, "strict_img_size": False}
    if name == "D2SwinTransformer":
        if swin.APE:
            raise ValueError("MODEL.SWIN.APE True is not supported: timm's Swin has no absolute position embedding")
        if swin.PATCH_SIZE != 4:
            raise ValueError(f"MODEL.SWIN.PATCH_SIZE must be 4 (strides 4/8/16/32), got {swin.PATCH_SIZE}")
        kwargs.update(
            img_size=swin.PRETRAIN_IMG_SIZE,
            embed_dim=swin.EMBED_DIM,
            depths=tuple(swin.DEPTHS),
            num_heads=tuple(swin.NUM_HEADS),
            window_size=swin.WINDOW_SIZE,
            mlp_ratio=swin.MLP_RATIO,
            qkv_bias=swin.QKV_BIAS,
            drop_rate=swin.DROP_RATE,
            attn_drop_rate=swin.ATTN_DROP_RATE,
        )
    return kwargs


class TimmBackbone(nn.Module):
    """timm feature extractor returning ``{"res2": (B, C2, H/4, W/4), ..., "res5": (B, C5, H/32, W/32)}``."""

    def __init__(
        self,
        model_name: str,
        out_features: List[str],
        *,
        pretrained: bool = False,
        freeze_bn: bool = True,
        output_norm: bool = False,
        grad_checkpointing: bool = False,
        channels_last: bool = False,
        timm_kwargs: Dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            model_name: timm model name (``resnet50``, ``swin_tiny_patch4_window7_224``, ...).
            out_features: subset of res2..res5 to return.
            pretrained: let timm download ImageNet weights (``MODEL.BACKBONE.ALLOW_DOWNLOAD``).
            freeze_bn: replace batch norms by frozen ones (detectron2 FrozenBN, as Mask2Former's ResNet), folded
                into the convolutions before them (:mod:`.fold_frozen_bn`: the same function, one pass fewer).
            output_norm: a LayerNorm on every returned feature (Mask2Former's D2SwinTransformer ``norm0..3``; not
                part of ImageNet checkpoints, so they start at identity).
            grad_checkpointing: recompute stage activations in backward (``MODEL.SWIN.USE_CHECKPOINT``).
            channels_last: run a convolutional backbone in NHWC memory layout (``MODEL.BACKBONE.CHANNELS_LAST``);
                the returned features are contiguous NCHW either way.
            timm_kwargs: passed to ``timm.create_model`` (drop_path_rate, Swin geometry, ...).
        """
        super().__init__()
        unknown = [f for f in out_features if f not in FEATURE_STRIDES]
        if unknown:
            raise ValueError(f"backbone out_features {unknown} unknown; expected a subset of {list(FEATURE_STRIDES)}")
        self.model_name = model_name
        self.model = timm.create_model(model_name, pretrained=pretrained, features_only=True, **(timm_kwargs or {}))
        reductions = list(self.model.feature_info.reduction())
        channels = list(self.model.feature_info.channels())
        # the last timm feature at each stride (a stride can repeat in principle; keep the deepest)
        self._indices: Dict[str, int] = {}
        for name, stride in FEATURE_STRIDES.items():
            matches = [i for i, r in enumerate(reductions) if r == stride]
            if not matches:
                raise ValueError(
                    f"timm model {model_name!r} has feature strides {reductions}; {name} needs stride {stride}"
                )
            self._indices[name] = matches[-1]
        self._out_features = list(out_features)
        self._shapes = {f: ShapeSpec(channels[self._indices[f]], FEATURE_STRIDES[f]) for f in self._out_features}
        self.nhwc = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")
        if freeze_bn:
            freeze_batch_norm(self.model)
            fold_frozen_batch_norms(self.model)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.channels_last = bool(channels_last) and not self.nhwc
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.output_norms = (
            nn.ModuleDict({f: nn.LayerNorm(self._shapes[f].channels) for f in self._out_features})
            if output_norm
            else None
        )

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """{"res2": ShapeSpec(channels, 4), ...} for the returned features."""
        return dict(self._shapes)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: (B, 3, H, W) normalised, H and W divisible by 32 → dict of NCHW feature maps."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"backbone expects (B, 3, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(
                f"backbone input size {tuple(x.shape[-2:])} must be divisible by 32 "
                "(MODEL.MASK_FORMER.SIZE_DIVISIBILITY pads the batch)"
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.model(x)
        out = {}
        for name in self._out_features:
            feature = features[self._indices[name]]
            if self.output_norms is not None:
                norm = self.output_norms[name]
                feature = norm(feature) if self.nhwc else norm(feature.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            out[name] = feature.permute(0, 3, 1, 2).contiguous() if self.nhwc else feature.contiguous()
        return out
