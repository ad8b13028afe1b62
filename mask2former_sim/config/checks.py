"""Config values this project supports, checked before anything is built.

- :func:`check_supported_choices`: detectron2 / Mask2Former keys kept so that their YAML files load, for a choice
  this project implements one way only (one pixel decoder, instance segmentation only, timm's ResNet layout, ...).
  Any other value is an error that names the key, the value found and the value supported, instead of being
  silently ignored; so is a pair of keys of which the code would read only one (:func:`check_test_resize`).
  ``MaskFormer.from_config`` and ``train_net.py`` (as soon as the config is read) call it.
- :func:`check_training_config`: values only a training run needs (``SOLVER.MAX_ITER > 0``); ``train_net.py``
  calls it unless ``--eval-only``.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Union

from .defaults import _C as defaults
from .schedule import check_schedule

__all__ = [
    "SUPPORTED_CHOICES",
    "SameAs",
    "Supported",
    "check_schedule",
    "check_supported_choices",
    "check_test_resize",
    "check_training_config",
]


class Supported(NamedTuple):
    """The one value a key may take, and what this project does instead of the other values."""

    value: Any
    reason: str


class SameAs(NamedTuple):
    """The key must equal another key, the one the code reads."""

    key: str
    reason: str


SUPPORTED_CHOICES: Dict[str, Union[Supported, SameAs]] = {
    "VERSION": Supported(2, "detectron2's config format 2"),
    "MODEL.META_ARCHITECTURE": Supported("MaskFormer", "the Mask2Former meta-architecture"),
    "MODEL.SEM_SEG_HEAD.NAME": Supported("MaskFormerHead", "Mask2Former's head"),
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": Supported(
        "MSDeformAttnPixelDecoder", "the multi-scale deformable-attention pixel decoder"
    ),
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": Supported(255, "no semantic-segmentation targets, so no ignore label"),
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": Supported(
        1.0, "the loss weights are MODEL.MASK_FORMER.*_WEIGHT, MODEL.BOXINST.* and MODEL.SIM.*"
    ),
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": Supported(
        "MultiScaleMaskedTransformerDecoder", "Mask2Former's masked-attention decoder"
    ),
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": Supported(
        "multi_scale_pixel_decoder", "the decoder reads the pixel decoder's multi-scale features"
    ),
    "MODEL.MASK_FORMER.ENC_LAYERS": Supported(0, "no extra transformer encoder (MaskFormer's)"),
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON": Supported(True, "instance segmentation is the only output"),
    "MODEL.MASK_FORMER.TEST.SEMANTIC_ON": Supported(False, "no semantic-segmentation inference"),
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": Supported(False, "no panoptic inference"),
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": Supported(
        0.8, "a threshold of panoptic inference, which is not implemented"
    ),
    "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": Supported(
        0.8, "a threshold of panoptic inference, which is not implemented"
    ),
    "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": Supported(
        False, "a switch of semantic inference; instance masks are always resized before top-k"
    ),
    "MODEL.SWIN.PATCH_NORM": Supported(True, "timm's Swin normalises the patch embedding"),
    "MODEL.SWIN.QK_SCALE": Supported(None, "timm's Swin scales attention by head_dim ** -0.5"),
    "MODEL.SWIN.OUT_FEATURES": SameAs("MODEL.BACKBONE.OUT_FEATURES", "the backbone returns those features"),
    "MODEL.RESNETS.STEM_TYPE": Supported("basic", "timm's ResNets have the basic 7x7 stem"),
    "MODEL.RESNETS.STEM_OUT_CHANNELS": Supported(64, "timm's ResNet stems are 64 wide"),
    "MODEL.RESNETS.STRIDE_IN_1X1": Supported(
        False, "timm's and torchvision's ResNets put the stride in the 3x3 convolution"
    ),
    "MODEL.RESNETS.OUT_FEATURES": SameAs("MODEL.BACKBONE.OUT_FEATURES", "the backbone returns those features"),
    "MODEL.RESNETS.NORM": Supported(
        "FrozenBN", "backbone batch norms are frozen or trained by MODEL.BACKBONE.FREEZE_BN True / False"
    ),
    "MODEL.RESNETS.RES5_MULTI_GRID": Supported([1, 1, 1], "res5 is not dilated"),
    "INPUT.FORMAT": Supported("RGB", "images are read and normalised as RGB"),
    "INPUT.SIZE_DIVISIBILITY": Supported(-1, "MODEL.MASK_FORMER.SIZE_DIVISIBILITY pads the batch"),
    "INPUT.COLOR_AUG_SSD": Supported(False, "no SSD colour augmentation"),
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": Supported(1.0, "no category-area constraint on crops"),
    "DATALOADER.ASPECT_RATIO_GROUPING": Supported(False, "batches are not grouped by aspect ratio"),
}
"""Key → :class:`Supported` value (or :class:`SameAs` another key), for :func:`check_supported_choices`."""


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for name in key.split("."):
        node = getattr(node, name)
    return node


def _same(found: Any, expected: Any) -> bool:
    """Equal values; a list equals a tuple of the same items, a bool or None equals only itself (not 1 or 0)."""
    if isinstance(found, (list, tuple)) and isinstance(expected, (list, tuple)):
        return list(found) == list(expected)
    if isinstance(found, bool) or isinstance(expected, bool) or found is None or expected is None:
        return found is expected
    return found == expected


def check_supported_choices(cfg: Any) -> None:
    """Every key of :data:`SUPPORTED_CHOICES` must hold its supported value.

    Raises:
        ValueError: names each offending key, the value found and the value supported.
    """
    errors = []
    for key, rule in SUPPORTED_CHOICES.items():
        found = _get(cfg, key)
        expected = _get(cfg, rule.key) if isinstance(rule, SameAs) else rule.value
        if not _same(found, expected):
            supported = f"{expected!r} ({rule.key})" if isinstance(rule, SameAs) else repr(expected)
            errors.append(
                f"{key} = {found!r} is not supported: mask2former_sim implements only {supported}; {rule.reason}"
            )
    if errors:
        raise ValueError("\n".join(errors))
    check_test_resize(cfg)
    check_schedule(cfg)


def check_test_resize(cfg: Any) -> None:
    """``INPUT.TEST_SCALE`` > 0 resizes test images by that factor and ``INPUT.MIN_SIZE_TEST`` /
    ``MAX_SIZE_TEST`` are then not read: setting one of them away from its default as well is an error.

    Raises:
        ValueError: names ``INPUT.TEST_SCALE`` and each test-size key that was set, with their values.
    """
    scale = cfg.INPUT.TEST_SCALE
    if not scale > 0:
        return
    conflicting = [
        f"INPUT.{key} = {cfg.INPUT[key]!r} (default {defaults.INPUT[key]!r})"
        for key in ("MIN_SIZE_TEST", "MAX_SIZE_TEST")
        if cfg.INPUT[key] != defaults.INPUT[key]
    ]
    if conflicting:
        raise ValueError(
            f"INPUT.TEST_SCALE = {scale!r} resizes test images by that factor and replaces the test size, but "
            f"{' and '.join(conflicting)} is set too: set INPUT.TEST_SCALE 0 to resize to the test size, or leave "
            "INPUT.MIN_SIZE_TEST / INPUT.MAX_SIZE_TEST at their defaults to resize by the factor"
        )


def check_training_config(cfg: Any) -> None:
    """Values a training run needs: ``SOLVER.MAX_ITER > 0`` optimizer steps.

    Raises:
        ValueError: names the key and the value found.
    """
    max_iter = cfg.SOLVER.MAX_ITER
    if not max_iter > 0:
        raise ValueError(
            f"SOLVER.MAX_ITER = {max_iter!r}: training needs SOLVER.MAX_ITER > 0 (the number of optimizer steps); "
            "to evaluate a checkpoint without training use --eval-only MODEL.WEIGHTS path/to/model.pth"
        )
