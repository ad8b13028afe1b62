"""The official Mask2Former checkpoint names (facebookresearch/Mask2Former, detectron2) and ours: one table, both ways.

An official instance-segmentation checkpoint (a model-zoo ``.pkl`` or a ``.pth`` state dict) names the network
``backbone.*``, ``sem_seg_head.pixel_decoder.*`` and ``sem_seg_head.predictor.*``; ours names it ``backbone.model.*``
(a timm ``features_only`` model), ``pixel_decoder.*`` and ``transformer_decoder.*``. The heads differ by prefixes and
three renames (:data:`HEAD_RULES`):

- the deformable encoder's layers: official ``transformer.encoder.layers.N``, ours ``transformer.layers.N``;
- the FPN levels finer than the encoder: official ``adapter_k`` / ``layer_k`` (a detectron2 ``Conv2d`` whose norm is
  its ``norm`` attribute; k = 1 the finest level), ours ``lateral_convs.j`` / ``output_convs.j`` (``Sequential(conv,
  norm, ...)``; j = 0 the coarsest level), so with F such levels j = F − k;
- nothing else: the transformer decoder's names are the official ones under ``sem_seg_head.predictor``.

The backbone follows the official model of its family:

- timm ``resnet*`` ↔ detectron2's ResNet (``stem.conv1``, ``stem.conv1.norm``, ``res2..res5``, ``convK.norm``,
  ``shortcut``, ``shortcut.norm``);
- timm ``swin_*`` ↔ ``D2SwinTransformer``: its ``layers.N.downsample`` ends stage N where timm's starts stage N + 1,
  and its output norms ``norm0..norm3`` are our ``output_norms.res2..res5``; the index and attention-mask buffers
  are rebuilt by the model and never carried;
- any other timm model (EfficientNet-Lite0: no official Mask2Former exists) ↔ ``backbone.<timm name>``.

Keys an official checkpoint holds that the network does not use (:data:`IGNORED_OFFICIAL_KEYS`: the criterion's
no-object weight) are dropped; our training state (the supervision's buffers, SIM's teacher, prototypes) has no
official name and is left out of :func:`to_official`.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Tuple

import torch

from ..modeling.backbone.timm_backbone import is_swin
from ..utils.weights_files import short_list

__all__ = [
    "HEAD_RULES",
    "IGNORED_OFFICIAL_KEYS",
    "NETWORK_PREFIXES",
    "REBUILT_BUFFERS",
    "OfficialNames",
    "from_official",
    "is_official",
    "official_names_for",
    "to_official",
]

NETWORK_PREFIXES = ("backbone.", "pixel_decoder.", "transformer_decoder.")  # our modules that official names cover
IGNORED_OFFICIAL_KEYS = ("criterion.empty_weight",)  # in official checkpoints, not part of the network
_OFFICIAL_HEAD_PREFIXES = ("sem_seg_head.pixel_decoder.", "sem_seg_head.predictor.")
REBUILT_BUFFERS = ("relative_position_index", "attn_mask", "num_batches_tracked")  # never carried, either way

# (our prefix, official prefix), the first match wins; the FPN convolutions are handled apart (index reversal)
HEAD_RULES: Tuple[Tuple[str, str], ...] = (
    ("pixel_decoder.transformer.layers.", "sem_seg_head.pixel_decoder.transformer.encoder.layers."),
    ("pixel_decoder.", "sem_seg_head.pixel_decoder."),
    ("transformer_decoder.", "sem_seg_head.predictor."),
)
_OURS_FPN = re.compile(r"^pixel_decoder\.(lateral_convs|output_convs)\.(\d+)\.(\d+)\.(.+)$")
_OFFICIAL_FPN = re.compile(r"^sem_seg_head\.pixel_decoder\.(adapter|layer)_(\d+)\.(norm\.)?(.+)$")
_FPN_NAMES = {"lateral_convs": "adapter", "output_convs": "layer"}


def is_official(state_dict: Dict[str, torch.Tensor]) -> bool:
    """True when ``state_dict`` names its heads as the official Mask2Former does (``sem_seg_head.*``)."""
    return any(key.startswith(_OFFICIAL_HEAD_PREFIXES) for key in state_dict)


class OfficialNames:
    """The name table of one network: its backbone family and its number F of FPN levels finer than the encoder.

    Args:
        backbone_name: the timm model name of the backbone (``resnet50``, ``swin_tiny_patch4_window7_224``, ...).
        num_fpn_levels: F, the pixel decoder's ``lateral_convs`` count (1 for res2..res5 with the encoder on
            res3..res5).
    """

    def __init__(self, backbone_name: str, num_fpn_levels: int) -> None:
        self.backbone_name = backbone_name
        self.num_fpn_levels = int(num_fpn_levels)
        if backbone_name.startswith("resnet"):
            self._backbone_to, self._backbone_from = _resnet_to_detectron2, _resnet_from_detectron2
        elif is_swin(backbone_name):
            self._backbone_to, self._backbone_from = _swin_to_official, _swin_from_official
        else:
            self._backbone_to, self._backbone_from = _same_name, _same_name

    def official_key(self, key: str) -> str:
        """The official name of our network key ``key`` (``backbone.*``, ``pixel_decoder.*``,
        ``transformer_decoder.*``); ValueError for a key outside the network."""
        if key.startswith("backbone.model."):
            return "backbone." + self._backbone_to(key[len("backbone.model.") :])
        if key.startswith("backbone.output_norms."):  # Swin's per-output LayerNorms
            level, rest = key[len("backbone.output_norms.") :].split(".", 1)
            return f"backbone.norm{int(level[len('res') :]) - 2}.{rest}"
        fpn = _OURS_FPN.match(key)
        if fpn:
            kind, j, part, rest = fpn.groups()
            k = self.num_fpn_levels - int(j)
            norm = "norm." if part == "1" else ""
            if part not in ("0", "1"):
                raise ValueError(f"{key}: an FPN convolution has a conv (0) and a norm (1), found part {part}")
            return f"sem_seg_head.pixel_decoder.{_FPN_NAMES[kind]}_{k}.{norm}{rest}"
        for ours, official in HEAD_RULES:
            if key.startswith(ours):
                return official + key[len(ours) :]
        raise ValueError(f"{key} is not a key of the network (expected one of the prefixes {NETWORK_PREFIXES})")

    def our_key(self, key: str) -> str:
        """Our name of the official key ``key``; ValueError for a key the table does not know."""
        if key.startswith("backbone."):
            rest = key[len("backbone.") :]
            norm = re.match(r"^norm(\d)\.(.+)$", rest)
            if norm and is_swin(self.backbone_name):
                return f"backbone.output_norms.res{int(norm.group(1)) + 2}.{norm.group(2)}"
            return "backbone.model." + self._backbone_from(rest)
        fpn = _OFFICIAL_FPN.match(key)
        if fpn:
            kind, k, norm, rest = fpn.groups()
            j = self.num_fpn_levels - int(k)
            if not 0 <= j < self.num_fpn_levels:
                raise ValueError(f"{key}: FPN level {k} outside 1..{self.num_fpn_levels} of this network")
            ours = {v: k2 for k2, v in _FPN_NAMES.items()}[kind]
            return f"pixel_decoder.{ours}.{j}.{1 if norm else 0}.{rest}"
        for ours, official in HEAD_RULES:
            if key.startswith(official):
                return ours + key[len(official) :]
        raise ValueError(f"{key} is not an official Mask2Former network key")


def official_names_for(model_or_cfg) -> OfficialNames:
    """The :class:`OfficialNames` of a built model (its backbone and pixel decoder) or of a config."""
    if hasattr(model_or_cfg, "MODEL"):
        from ..modeling.backbone.timm_backbone import FEATURE_STRIDES, resolve_backbone_name
        from ..modeling.pixel_decoder.msdeformattn import fpn_level_count

        cfg = model_or_cfg
        head = cfg.MODEL.SEM_SEG_HEAD
        encoder_stride = min(FEATURE_STRIDES[f] for f in head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES)
        return OfficialNames(resolve_backbone_name(cfg), fpn_level_count(encoder_stride, head.COMMON_STRIDE))
    model = model_or_cfg
    return OfficialNames(model.backbone.model_name, len(model.pixel_decoder.lateral_convs))


def _network_items(state_dict: Dict[str, torch.Tensor]):
    for key, value in state_dict.items():
        if key.startswith(NETWORK_PREFIXES) and not any(b in key for b in REBUILT_BUFFERS):
            yield key, value


def to_official(state_dict: Dict[str, torch.Tensor], model_or_cfg) -> Dict[str, torch.Tensor]:
    """Our state dict (or any subset of it) → official names; training state outside the network is left out."""
    names = official_names_for(model_or_cfg)
    return {names.official_key(key): value for key, value in _network_items(state_dict)}


def from_official(state_dict: Dict[str, torch.Tensor], model_or_cfg) -> Dict[str, torch.Tensor]:
    """An official state dict → our names (index buffers and :data:`IGNORED_OFFICIAL_KEYS` dropped).

    Raises:
        ValueError: a key the table does not know (named, with the count of such keys).
    """
    names = official_names_for(model_or_cfg)
    out, unknown = {}, []
    for key, value in state_dict.items():
        if key in IGNORED_OFFICIAL_KEYS or any(b in key for b in REBUILT_BUFFERS):
            continue
        try:
            out[names.our_key(key)] = value
        except ValueError:
            unknown.append(key)
    if unknown:
        shown = short_list(unknown, 5)
        raise ValueError(f"{len(unknown)} keys of the checkpoint are not official Mask2Former names: {shown}")
    return out


# ---- backbones -----------------------------------------------------------------------------------------------------

_Renamer = Callable[[str], str]


def _same_name(key: str) -> str:
    return key


# timm/torchvision ResNet ↔ detectron2 ResNet, as ordered (pattern, replacement) pairs for each direction
_RESNET_TO_D2: List[Tuple[str, str]] = [
    (r"^conv1\.", "stem.conv1."),
    (r"^bn1\.", "stem.conv1.norm."),
    (r"^layer(\d)\.(\d+)\.bn(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.{m.group(2)}.conv{m.group(3)}.norm."),
    (r"^layer(\d)\.(\d+)\.downsample\.0\.", lambda m: f"res{int(m.group(1)) + 1}.{m.group(2)}.shortcut."),
    (r"^layer(\d)\.(\d+)\.downsample\.1\.", lambda m: f"res{int(m.group(1)) + 1}.{m.group(2)}.shortcut.norm."),
    (r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}."),
]
_RESNET_FROM_D2: List[Tuple[str, str]] = [
    (r"^stem\.conv1\.norm\.", "bn1."),
    (r"^stem\.conv1\.", "conv1."),
    (r"^res(\d)\.(\d+)\.conv(\d)\.norm\.", lambda m: f"layer{int(m.group(1)) - 1}.{m.group(2)}.bn{m.group(3)}."),
    (r"^res(\d)\.(\d+)\.shortcut\.norm\.", lambda m: f"layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.1."),
    (r"^res(\d)\.(\d+)\.shortcut\.", lambda m: f"layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.0."),
    (r"^res(\d)\.", lambda m: f"layer{int(m.group(1)) - 1}."),
]


def _first_rule(rules, key: str) -> str:
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, key, count=1)
        if count:
            return new
    return key


def _resnet_to_detectron2(key: str) -> str:
    return _first_rule(_RESNET_TO_D2, key)


def _resnet_from_detectron2(key: str) -> str:
    return _first_rule(_RESNET_FROM_D2, key)


def _swin_to_official(key: str) -> str:
    """timm ``features_only`` Swin (``layers_N``, downsample at the start of stage N) → D2SwinTransformer."""
    key = re.sub(r"^layers_(\d+)\.", r"layers.\1.", key)
    return re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)


def _swin_from_official(key: str) -> str:
    key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
    return re.sub(r"^layers\.(\d+)\.", r"layers_\1.", key)
