"""Hand-made COCO masks for the tests of the diagnostics tools."""

import numpy as np
import pycocotools.mask as mask_util


def box_rle(y1: int, x1: int, y2: int, x2: int, size: int = 20) -> dict:
    """Compressed RLE (json-ready) of a ``size``² mask that is 1 on rows y1:y2 and columns x1:x2."""
    m = np.zeros((size, size), np.uint8, order="F")
    m[y1:y2, x1:x2] = 1
    rle = mask_util.encode(m)
    rle["counts"] = rle["counts"].decode()
    return rle
