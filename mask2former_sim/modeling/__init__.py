"""Mask2Former model: backbone, pixel decoder, transformer decoder, supervision modes, criterion, meta-architecture."""

from .criterion import SetCriterion
from .losses.mask import MaskCost
from .matcher import HungarianMatcher
from .meta_arch import MaskFormer
from .postprocessing import instance_inference
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
]


def build_model(cfg, training: bool = True) -> MaskFormer:
    """``MaskFormer`` built from ``cfg`` on ``cfg.MODEL.DEVICE`` (weights are NOT loaded: see engine.checkpoint).

    ``training`` False builds the network alone, for inference: no supervision (SIM's teacher, bank, prototypes)
    and no criterion; it loads the student's weights from any checkpoint.
    """
    return MaskFormer.from_config(cfg, training=training).to(cfg.MODEL.DEVICE)
