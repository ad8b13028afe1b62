"""``ShapeSpec``: channels and stride of one feature map (detectron2's name)."""

from typing import NamedTuple, Optional

__all__ = ["ShapeSpec"]


class ShapeSpec(NamedTuple):
    """Channels and stride (input pixels per feature pixel) of a feature map."""

    channels: Optional[int] = None
    stride: Optional[int] = None
