"""mask2former_sim: Mask2Former instance segmentation trained from masks, boxes (BoxInst-M2F) or boxes + SIM.

Importing the package is cheap and never needs the compiled ``MultiScaleDeformableAttention`` op.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["get_cfg", "build_model", "Predictor", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy exports keep ``import mask2former_sim`` light (no timm/pycocotools until needed).
    if name == "get_cfg":
        from .config import get_cfg

        return get_cfg
    if name == "build_model":
        from .modeling import build_model

        return build_model
    if name == "Predictor":
        from .predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'mask2former_sim' has no attribute {name!r}")
