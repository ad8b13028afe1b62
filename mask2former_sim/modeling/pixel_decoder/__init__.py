"""Mask2Former's pixel decoder: multi-scale deformable-attention encoder + FPN to stride 4."""

from .ms_deform_attn_module import MSDeformAttn
from .msdeformattn import MSDeformAttnPixelDecoder
from .position_encoding import PositionEmbeddingSine

__all__ = ["MSDeformAttn", "MSDeformAttnPixelDecoder", "PositionEmbeddingSine"]
