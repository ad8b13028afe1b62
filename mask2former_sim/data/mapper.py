"""Dataset dict → model input: read the image, augment, build the per-image targets.

Training output (one dict per image)::

    {"image": uint8 (3, H, W) RGB, "padding_mask": bool (H, W) True = padding, "height": original H,
     "width": original W, "image_id": int,
     "instances": {"gt_boxes": float32 (N, 4) XYXY in input pixels, "gt_classes": int64 (N,),
                   "gt_masks": bool (N, H, W) — "mask" supervision only}}

In ``mask`` mode the masks are decoded (pycocotools) and transformed with the image, boxes are recomputed from
the transformed masks and empty instances dropped (as Mask2Former's LSJ mapper). In ``box`` / ``sim`` mode the
box corners are transformed directly and clipped, degenerate boxes dropped; masks are never decoded, so a
box-only json trains.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..config.checks import check_test_resize
from ..modeling.supervision import uses_gt_masks
from ..structures.boxes import masks_to_boxes
from .coco import check_image_size, decode_rles, read_image, segmentation_to_rle
from .transforms import (
    Augmentation,
    FixedSizeCrop,
    RandomCrop,
    RandomFlip,
    RandomScale,
    ResizeScale,
    ResizeShortestEdge,
    TransformList,
    apply_augmentations,
    clip_boxes,
    nonempty_boxes,
)

MAPPER_NAMES = ("coco_instance_lsj", "multi_scale", "scale_crop")
_BOX_MARGIN = np.array([-2.0, -2.0, 2.0, 2.0], dtype=np.float32)  # json boxes need not be tight around masks


def build_train_augmentations(cfg: Any) -> List[Augmentation]:
    """``INPUT.DATASET_MAPPER_NAME``: "coco_instance_lsj" (flip, ResizeScale, FixedSizeCrop), "multi_scale"
    (flip, ResizeShortestEdge over ``MIN_SIZE_TRAIN``, optional ``CROP``) or "scale_crop" (flip, RandomScale by
    ``[MIN_SCALE, MAX_SCALE]`` of the image's own size, FixedSizeCrop to ``IMAGE_SIZE``)."""
    inp = cfg.INPUT
    if inp.RANDOM_FLIP not in ("horizontal", "vertical", "none"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got {inp.RANDOM_FLIP!r}")
    augs: List[Augmentation] = []
    if inp.RANDOM_FLIP != "none":
        augs.append(RandomFlip(horizontal=inp.RANDOM_FLIP == "horizontal", vertical=inp.RANDOM_FLIP == "vertical"))
    if inp.DATASET_MAPPER_NAME == "coco_instance_lsj":
        size = inp.IMAGE_SIZE
        augs += [ResizeScale(inp.MIN_SCALE, inp.MAX_SCALE, size, size), FixedSizeCrop((size, size), inp.PAD_VALUE)]
    elif inp.DATASET_MAPPER_NAME == "multi_scale":
        augs.append(ResizeShortestEdge(inp.MIN_SIZE_TRAIN, inp.MAX_SIZE_TRAIN, inp.MIN_SIZE_TRAIN_SAMPLING))
        if inp.CROP.ENABLED:
            if inp.CROP.TYPE != "absolute":
                raise ValueError(f"INPUT.CROP.TYPE must be 'absolute' (crop size in pixels), got {inp.CROP.TYPE!r}")
            augs.append(RandomCrop(tuple(inp.CROP.SIZE)))
    elif inp.DATASET_MAPPER_NAME == "scale_crop":
        size = inp.IMAGE_SIZE
        augs += [RandomScale(inp.MIN_SCALE, inp.MAX_SCALE), FixedSizeCrop((size, size), inp.PAD_VALUE)]
    else:
        raise ValueError(f"INPUT.DATASET_MAPPER_NAME must be one of {MAPPER_NAMES}, got {inp.DATASET_MAPPER_NAME!r}")
    return augs


def build_test_resize(cfg: Any) -> Augmentation:
    """Test-time resize: a fixed factor ``INPUT.TEST_SCALE`` of the image when > 0, else the shortest edge to
    ``INPUT.MIN_SIZE_TEST`` (longest ≤ ``MAX_SIZE_TEST``; 0 keeps the image). Both set is an error
    (:func:`~mask2former_sim.config.checks.check_test_resize`)."""
    check_test_resize(cfg)
    if cfg.INPUT.TEST_SCALE > 0:
        return RandomScale(cfg.INPUT.TEST_SCALE, cfg.INPUT.TEST_SCALE)
    return ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)


class InstanceDatasetMapper:
    """Training mapper. ``mapper(dataset_dict, rng)``: all randomness comes from ``rng`` (reproducible).

    Args:
        augmentations: the training augmentations (:func:`build_train_augmentations`).
        with_masks: decode and transform the GT masks (mask supervision); otherwise boxes only.
        min_box_size: boxes narrower or shorter than this (pixels) are dropped.
    """

    def __init__(self, *, augmentations: List[Augmentation], with_masks: bool = True, min_box_size: float = 1e-5):
        self.augmentations = list(augmentations)
        self.with_masks = with_masks
        self.min_box_size = min_box_size

    @classmethod
    def from_config(cls, cfg: Any) -> "InstanceDatasetMapper":
        return cls(augmentations=build_train_augmentations(cfg), with_masks=uses_gt_masks(cfg))

    def __call__(self, dataset_dict: Dict[str, Any], rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
        rng = rng if rng is not None else np.random.default_rng()
        image = read_image(dataset_dict["file_name"])
        check_image_size(image, dataset_dict)
        h0, w0 = image.shape[:2]
        image, tfm = apply_augmentations(self.augmentations, image, rng)
        h, w = image.shape[:2]
        valid = tfm.apply_masks(np.ones((1, h0, w0), dtype=bool))[0]

        anns = [a for a in dataset_dict["annotations"] if not a.get("iscrowd", 0)]
        classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
        instances: Dict[str, torch.Tensor] = {}
        if self.with_masks:
            for a in anns:
                if "segmentation" not in a:
                    raise ValueError(
                        f"annotation id {a['id']} of image {dataset_dict['file_name']} has no 'segmentation'; "
                        f"MODEL.MASK_FORMER.SUPERVISION 'mask' needs masks (use 'box' or 'sim' for a box-only json)"
                    )
            # instances whose box (+2 px) leaves the output window have empty masks: skip decoding them
            near = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4) + _BOX_MARGIN
            reach = nonempty_boxes(clip_boxes(tfm.apply_boxes(near), h, w), self.min_box_size)
            anns, classes = [a for a, r in zip(anns, reach) if r], classes[reach]
            masks = tfm.apply_masks(self._decode_masks(anns, dataset_dict, h0, w0)).astype(bool)
            boxes = masks_to_boxes(torch.from_numpy(masks)).numpy()
            keep = nonempty_boxes(boxes, self.min_box_size) & masks.any(axis=(1, 2))
            instances["gt_masks"] = torch.from_numpy(np.ascontiguousarray(masks[keep]))
        else:
            boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
            boxes = clip_boxes(tfm.apply_boxes(boxes), h, w)
            keep = nonempty_boxes(boxes, self.min_box_size)
        instances["gt_boxes"] = torch.from_numpy(boxes[keep].astype(np.float32))
        instances["gt_classes"] = torch.from_numpy(classes[keep])
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "padding_mask": torch.from_numpy(~valid),
            "height": dataset_dict["height"],
            "width": dataset_dict["width"],
            "image_id": dataset_dict["image_id"],
            "instances": {k: instances[k] for k in ("gt_boxes", "gt_classes", "gt_masks") if k in instances},
        }

    @staticmethod
    def _decode_masks(anns: List[Dict[str, Any]], dataset_dict: Dict[str, Any], h: int, w: int) -> np.ndarray:
        """uint8 masks ``(N, h, w)`` of the annotations; errors name the annotation id and the image."""
        rles = []
        for a in anns:
            try:
                rles.append(segmentation_to_rle(a["segmentation"], h, w))
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"cannot decode the segmentation of annotation id {a['id']} of image "
                    f"{dataset_dict['file_name']}: {e}"
                ) from e
        return decode_rles(rles, h, w)


class InferenceDatasetMapper:
    """Test mapper: ``{"image": uint8 (3, h, w) resized, "height", "width" (original), "image_id", "file_name"}``.

    The shortest edge is resized to ``min_size`` (longest ≤ ``max_size``; ``min_size`` 0 keeps the image), or
    ``resize`` (e.g. :func:`build_test_resize`) is applied.
    """

    def __init__(self, *, min_size: int = 0, max_size: int = 0, resize: Optional[Augmentation] = None):
        self.resize = resize if resize is not None else ResizeShortestEdge([min_size], max_size)

    @classmethod
    def from_config(cls, cfg: Any) -> "InferenceDatasetMapper":
        return cls(resize=build_test_resize(cfg))

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        image = read_image(dataset_dict["file_name"])
        check_image_size(image, dataset_dict)
        tfm = TransformList([self.resize.get_transform(image.shape[0], image.shape[1], np.random.default_rng(0))])
        image = tfm.apply_image(image)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": dataset_dict["height"],
            "width": dataset_dict["width"],
            "image_id": dataset_dict["image_id"],
            "file_name": dataset_dict["file_name"],
        }
