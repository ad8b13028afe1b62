"""Mask2Former model: backbone, pixel decoder, transformer decoder, supervision modes, criterion, meta-architecture."""

from .criterion import SetCriterion
from .losses.mask import MaskCost
from .matcher import HungarianMatcher
from .meta_arch import MaskFormer
from .postprocessing import instance_inference, masks_to_boxes
from .supervision import Supervision, build_criterion, build_supervision

__all__ = [
    "build_model",
    "MaskFormer",
    "Supervision",
    "build_supervision",
    "build_criterion",
    "HungarianMatcher",
    "MaskCost",
    "SetCriterion",
    "instance_inference",
    "masks_to_boxes",
]


def build_model(cfg) -> MaskFormer:
    """``MaskFormer`` built from ``cfg`` on ``cfg.MODEL.DEVICE`` (weights are NOT loaded: see engine.checkpoint)."""
    return MaskFormer.from_config(cfg).to(cfg.MODEL.DEVICE)
