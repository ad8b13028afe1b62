"""Geometric structures shared by the data, the losses, SIM and post-processing (detectron2's ``structures``)."""

from .boxes import box_area, box_iou, box_raster, boxes_to_stride_masks, masks_to_boxes, pixels_in_boxes

__all__ = ["box_area", "box_iou", "box_raster", "boxes_to_stride_masks", "masks_to_boxes", "pixels_in_boxes"]
