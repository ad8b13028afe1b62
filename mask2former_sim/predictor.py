"""``Predictor``: one call from an RGB image to instances, with the model built and its weights loaded once."""

from __future__ import annotations

import logging
from typing import Any, Dict

import numpy as np
import torch

from .data.mapper import build_test_resize
from .engine.checkpoint import load_model_weights
from .modeling import build_model

logger = logging.getLogger(__name__)


class Predictor:
    """Build the model of ``cfg``, load ``cfg.MODEL.WEIGHTS`` once, and segment single images.

    ``predictor(image, score_threshold=0.0)`` takes an RGB uint8 array (H, W, 3), resizes it as the test loader
    does (``INPUT.TEST_SCALE``, or ``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST`` on the shortest edge) and
    returns ``{"pred_masks": bool (N, H, W), "pred_boxes": float (N, 4) XYXY, "scores": (N,), "pred_classes":
    int64 (N,)}`` on the CPU, at the original image size; with ``score_threshold`` only the instances scoring at
    least that, whose masks alone are brought to the image size (a 12-megapixel photo stays cheap).
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg, training=False)  # the network alone: no teacher, bank or prototypes
        self.model.eval()
        if self.cfg.MODEL.WEIGHTS:
            load_model_weights(self.model, self.cfg.MODEL.WEIGHTS, strict=True)
        else:
            logger.warning("MODEL.WEIGHTS is empty: the predictor runs a randomly initialised model")
        if self.cfg.INPUT.FORMAT != "RGB":
            raise ValueError(f"INPUT.FORMAT must be 'RGB' (the model's channel order); got {self.cfg.INPUT.FORMAT!r}")
        self.resize = build_test_resize(self.cfg)

    def __call__(self, image: np.ndarray, score_threshold: float = 0.0) -> Dict[str, torch.Tensor]:
        """Instances of one RGB uint8 image (H, W, 3) at its original size (scoring ≥ ``score_threshold``)."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            raise ValueError(
                f"Predictor expects an RGB uint8 array of shape (H, W, 3); got {type(image).__name__} {shape}"
            )
        if image.dtype != np.uint8:
            raise ValueError(f"Predictor expects a uint8 image; got dtype {image.dtype}")
        height, width = image.shape[:2]
        resized = self.resize.get_transform(height, width, np.random.default_rng(0)).apply_image(image)
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        outputs = self.model.predict([{"image": tensor, "height": height, "width": width}], score_threshold)
        return {k: v.detach().cpu() for k, v in outputs[0]["instances"].items()}
