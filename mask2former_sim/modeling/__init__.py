"""Mask2Former model: backbone, pixel decoder, transformer decoder, matcher, criterion, meta-architecture.

``build_model`` imports the network modules on first use, so the losses, matcher, criterion and supervision
import without timm or the deformable-attention stack.
"""

from .criterion import SetCriterion
from .mask_supervision import MaskCost
from .matcher import HungarianMatcher
from .postprocessing import instance_inference, masks_to_boxes
from .supervision import build_criterion, build_supervision

__all__ = [
    "build_model",
    "MaskFormer",
    "build_supervision",
    "build_criterion",
    "HungarianMatcher",
    "MaskCost",
    "SetCriterion",
    "instance_inference",
    "masks_to_boxes",
]


def build_model(cfg):
    """``MaskFormer`` built from ``cfg`` on ``cfg.MODEL.DEVICE`` (weights are NOT loaded: see engine.checkpoint)."""
    from .meta_arch import MaskFormer

    model = MaskFormer.from_config(cfg)
    return model.to(cfg.MODEL.DEVICE)


def __getattr__(name: str):
    if name == "MaskFormer":
        from .meta_arch import MaskFormer

        return MaskFormer
    raise AttributeError(f"module 'mask2former_sim.modeling' has no attribute {name!r}")
