"""Layers shared by the model: multi-scale deformable attention and ``ShapeSpec``.

The compiled ``MultiScaleDeformableAttention`` op is imported lazily (only when dispatched to).
"""

from .ms_deform_attn import MSDA_IMPLS, cuda_op_available, ms_deform_attn, ms_deform_attn_pytorch
from .shape_spec import ShapeSpec

__all__ = ["MSDA_IMPLS", "ShapeSpec", "cuda_op_available", "ms_deform_attn", "ms_deform_attn_pytorch"]
