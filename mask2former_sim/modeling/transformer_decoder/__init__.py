"""Mask2Former's masked-attention transformer decoder."""

from .mask2former_transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = ["MultiScaleMaskedTransformerDecoder"]
