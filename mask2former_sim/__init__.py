"""mask2former_sim: Mask2Former instance segmentation trained from masks, boxes (BoxInst-M2F) or boxes + SIM.

Importing the package never needs the compiled ``MultiScaleDeformableAttention`` op.
"""

from .config import get_cfg
from .modeling import build_model
from .predictor import Predictor

__version__ = "0.1.0"

__all__ = ["get_cfg", "build_model", "Predictor", "__version__"]
