"""Weights from and to the Mask2Former ecosystem: the official checkpoints' names (:mod:`.official`) and Hugging Face
transformers' ``Mask2FormerForUniversalSegmentation`` (:mod:`.transformers`, which needs the ``transformers``
package and is imported on its own)."""

from .official import OfficialNames, from_official, is_official, to_official

__all__ = ["OfficialNames", "from_official", "is_official", "to_official"]
