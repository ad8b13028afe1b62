"""Backbones: timm feature extractors returning ``res2..res5`` and their local-checkpoint loading."""

from __future__ import annotations

from typing import List

from ...layers.shape_spec import ShapeSpec
from .checkpoint import (
    LoadReport,
    efficientnet_lite0_offline_state_dict,
    load_backbone_state_dict,
    read_checkpoint,
)
from .timm_backbone import TimmBackbone, is_swin, resolve_backbone_name, timm_kwargs_from_config

__all__ = ["LoadReport", "ShapeSpec", "TimmBackbone", "build_backbone", "is_swin", "load_backbone_weights"]


def build_backbone(cfg) -> TimmBackbone:
    """The backbone of ``MODEL.BACKBONE.*`` with its ImageNet weights when configured.

    Weights, in order: timm's hub (only with ``MODEL.BACKBONE.ALLOW_DOWNLOAD``), the offline package weights
    (``MODEL.BACKBONE.PRETRAINED_OFFLINE``), then the local file ``MODEL.BACKBONE.WEIGHTS``.
    """
    bcfg = cfg.MODEL.BACKBONE
    model_name = resolve_backbone_name(cfg)
    backbone = TimmBackbone(
        model_name,
        list(bcfg.OUT_FEATURES),
        pretrained=bool(bcfg.ALLOW_DOWNLOAD),
        freeze_bn=bcfg.FREEZE_BN,
        output_norm=is_swin(bcfg.NAME),
        grad_checkpointing=is_swin(bcfg.NAME) and cfg.MODEL.SWIN.USE_CHECKPOINT,
        channels_last=bcfg.CHANNELS_LAST,
        timm_kwargs=timm_kwargs_from_config(cfg),
    )
    load_backbone_weights(backbone, bcfg.PRETRAINED_OFFLINE, bcfg.WEIGHTS)
    return backbone


def load_backbone_weights(backbone: TimmBackbone, pretrained_offline: str = "", weights: str = "") -> List[LoadReport]:
    """Load the offline package weights and/or a local checkpoint into ``backbone``; one report per source."""
    reports = []
    if pretrained_offline:
        if pretrained_offline != "efficientnet_lite0":
            raise ValueError(
                f"MODEL.BACKBONE.PRETRAINED_OFFLINE must be '' or 'efficientnet_lite0', got {pretrained_offline!r}"
            )
        if backbone.model_name != "tf_efficientnet_lite0":
            raise ValueError(
                "MODEL.BACKBONE.PRETRAINED_OFFLINE 'efficientnet_lite0' needs MODEL.BACKBONE.NAME "
                f"'tf_efficientnet_lite0', got {backbone.model_name!r}"
            )
        report = load_backbone_state_dict(
            backbone.model, efficientnet_lite0_offline_state_dict(), "timm", "efficientnet_lite0 package"
        )
        if report.missing or report.mismatched:
            raise RuntimeError(
                f"efficientnet_lite0 package weights did not fit: missing {report.missing}, "
                f"mismatched {report.mismatched}"
            )
        reports.append(report)
    if weights:
        reports.append(load_backbone_state_dict(backbone.model, read_checkpoint(weights), "auto", weights))
    return reports
