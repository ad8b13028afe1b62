"""Optimizer with Mask2Former's parameter groups, and gradient clipping the trainer applies before ``step()``.

Parameter groups (Mask2Former ``train_net.py``): learning rate ``BASE_LR * BACKBONE_MULTIPLIER`` for parameters
whose module path contains ``"backbone"``; weight decay ``WEIGHT_DECAY_NORM`` for normalisation layers,
``WEIGHT_DECAY_EMBED`` for ``nn.Embedding`` and 0 for Swin's ``relative_position_bias_table`` /
``absolute_pos_embed``; ``WEIGHT_DECAY`` otherwise. Frozen parameters (``requires_grad=False``, e.g. an EMA
teacher) never enter the optimizer and a parameter shared by two modules enters once.

The optimizer gets these groups merged by hyper-parameters (:func:`merge_param_groups`, a handful of groups
instead of one per parameter) and, for AdamW, its fused kernel: both act per group, and per-parameter groups
made the step run tensor by tensor.

Clipping is a separate function (:func:`clip_gradients`) rather than a hidden part of ``optimizer.step()`` so
that the trainer can unscale AMP gradients first (``scaler.unscale_(optimizer)``) and then clip true gradients.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Optional, Set

import torch
from torch import nn

__all__ = ["build_optimizer", "get_param_groups", "merge_param_groups", "clip_gradients", "NORM_MODULE_TYPES"]

logger = logging.getLogger(__name__)

NORM_MODULE_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
"""Module types whose parameters get ``WEIGHT_DECAY_NORM``; classes named ``*FrozenBatchNorm*``/``*FrozenBN*``
or ``*LayerNorm*``/``*GroupNorm*``/``*BatchNorm*`` (timm and our own norms) count too, see :func:`_is_norm`."""

_NO_DECAY_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")
_NORM_NAME_HINTS = ("BatchNorm", "FrozenBN", "GroupNorm", "LayerNorm", "InstanceNorm", "RMSNorm")


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, NORM_MODULE_TYPES):
        return True
    name = type(module).__name__
    return any(hint in name for hint in _NORM_NAME_HINTS)


def get_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    backbone_multiplier: float = 1.0,
) -> List[Dict[str, Any]]:
    """One parameter group per trainable parameter, with Mask2Former's lr and weight-decay overrides.

    Each group is ``{"params": [p], "lr": ..., "weight_decay": ..., "name": "module.path.param"}``; the
    ``name`` entry is informational (optimizers ignore unknown group keys).
    """
    groups: List[Dict[str, Any]] = []
    seen: Set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr = base_lr
            decay = weight_decay
            if "backbone" in module_name:
                lr = base_lr * backbone_multiplier
            if any(key in param_name for key in _NO_DECAY_PARAM_NAMES):
                decay = 0.0
            if _is_norm(module):
                decay = weight_decay_norm
            if isinstance(module, nn.Embedding):
                decay = weight_decay_embed
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            groups.append({"params": [param], "lr": lr, "weight_decay": decay, "name": full_name})
    return groups


def merge_param_groups(groups: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Merge the groups of :func:`get_param_groups` that share every hyper-parameter, in first-seen order.

    Each merged group holds ``params`` and ``names`` (the members' ``name`` entries, in the same order).
    """
    merged: Dict[tuple, Dict[str, Any]] = {}
    for group in groups:
        hyper = {k: v for k, v in group.items() if k not in ("params", "name")}
        key = tuple(sorted(hyper.items()))
        if key not in merged:
            merged[key] = {**hyper, "params": [], "names": []}
        merged[key]["params"].extend(group["params"])
        merged[key]["names"].extend([group.get("name", "")] * len(group["params"]))
    return list(merged.values())


def _fused_supported(groups: List[Dict[str, Any]]) -> bool:
    """AdamW's fused kernel takes floating-point parameters on the CPU or CUDA."""
    params = [p for g in groups for p in g["params"]]
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` ("ADAMW" or "SGD") over :func:`get_param_groups` built from ``cfg.SOLVER``."""
    solver = cfg.SOLVER
    groups = get_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_embed=solver.WEIGHT_DECAY_EMBED,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
    )
    if not groups:
        raise ValueError("build_optimizer: the model has no parameter with requires_grad=True")
    n_tensors = len(groups)
    groups = merge_param_groups(groups)
    name = solver.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=solver.BASE_LR, fused=_fused_supported(groups))
    elif name == "SGD":
        optimizer = torch.optim.SGD(groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {solver.OPTIMIZER!r}")
    n_params = sum(p.numel() for g in groups for p in g["params"])
    logger.info(
        "optimizer %s: %d parameter tensors in %d groups, %d parameters", name, n_tensors, len(groups), n_params
    )
    return optimizer


def _params_with_grad(params: Iterable[torch.Tensor]) -> List[torch.Tensor]:
    out: List[torch.Tensor] = []
    seen: Set[int] = set()
    for p in params:
        if p.grad is not None and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def clip_gradients(
    params: Iterable[torch.Tensor],
    clip_type: str = "full_model",
    clip_value: float = 0.01,
    norm_type: float = 2.0,
) -> Optional[torch.Tensor]:
    """Clip gradients in place; call after ``scaler.unscale_(optimizer)`` and before ``optimizer.step()``.

    ``full_model``: one total ``norm_type``-norm over all gradients, scaled by ``min(1, clip_value / norm)``
    (``torch.nn.utils.clip_grad_norm_``; Mask2Former's default). ``norm``: the same, separately for each
    parameter (detectron2's "norm"). ``value``: each gradient entry clamped to ``[-clip_value, clip_value]``.
    Returns the total gradient norm before clipping for ``full_model``, otherwise ``None``.
    """
    params = _params_with_grad(params)
    if not params:
        return None
    if clip_type == "full_model":
        return torch.nn.utils.clip_grad_norm_(params, clip_value, norm_type=norm_type)
    if clip_type == "norm":
        for p in params:
            torch.nn.utils.clip_grad_norm_([p], clip_value, norm_type=norm_type)
        return None
    if clip_type == "value":
        torch.nn.utils.clip_grad_value_(params, clip_value)
        return None
    raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'full_model', 'norm' or 'value', got {clip_type!r}")
