"""Frozen batch norms folded into the convolutions that feed them.

A frozen batch norm after a convolution is an affine map per channel, ``BN(y) = s·y + (β − μ·s)`` with
``s = γ / sqrt(σ² + ε)``, so ``BN(conv(x; W, b)) = conv(x; s·W, s·b + β − μ·s)``: one convolution instead of a
convolution and two elementwise passes (and their backward). The folded weights are computed at every forward
from the norm's own buffers, so loading a checkpoint, the EMA teacher update or ``.to(device)`` need no re-fold,
and gradients reach the convolution's weights exactly as before.

The state dict does not change: the convolution keeps its ``weight``/``bias`` under its own name and the norm
stays where it was, with its buffers, applying only its activation. A convolution and a frozen norm are paired
when the norm is the convolution's next sibling module (timm's EfficientNet and ResNet blocks register them in
the order they are called); :func:`fold_frozen_batch_norms` first folds a copy and compares it with the unfolded
copy on a random input, and leaves the model unfolded if they differ.
"""

from __future__ import annotations

import copy
import logging
from typing import List, Tuple

import torch
from timm.layers import Conv2dSame, FrozenBatchNormAct2d
from timm.layers.padding import pad_same
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["FoldedConv2d", "FoldedFrozenBatchNorm", "fold_frozen_batch_norms", "frozen_bn_scale_shift"]

logger = logging.getLogger(__name__)

_FROZEN_NORMS = (FrozenBatchNormAct2d, FrozenBatchNorm2d)


def frozen_bn_scale_shift(norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """(C,) scale ``s = γ / sqrt(σ² + ε)`` and shift ``β − μ·s`` of a frozen batch norm: ``BN(y) = s·y + shift``."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    return scale, norm.bias - norm.running_mean * scale


class FoldedFrozenBatchNorm(nn.Module):
    """A frozen batch norm whose affine map the preceding :class:`FoldedConv2d` applies: keeps the norm's buffers
    (same state-dict keys), applies only its dropout and activation (timm's ``FrozenBatchNormAct2d``; none for
    torchvision's ``FrozenBatchNorm2d``)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.eps = norm.eps
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, getattr(norm, name))
        self.drop = getattr(norm, "drop", nn.Identity())
        self.act = getattr(norm, "act", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: the folded convolution's output, already normalised."""
        return self.act(self.drop(x))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, folded into the preceding convolution"


class FoldedConv2d(nn.Conv2d):
    """``nn.Conv2d`` (or timm's TF-"same" ``Conv2dSame``) followed by a frozen batch norm, in one convolution with
    the weights ``s·W`` and bias ``s·b + β − μ·s`` (module docstring). Holds the convolution's own parameters."""

    def __init__(self, conv: nn.Conv2d, norm: FoldedFrozenBatchNorm) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        self.weight = conv.weight
        self.bias = conv.bias
        self.same_padding = isinstance(conv, Conv2dSame)  # TF "SAME": pad from the input size at every call
        # the norm is a sibling module, not a submodule: its buffers keep their own state-dict keys
        self.__dict__["norm"] = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W) → BN(conv(x)) (B, C_out, H', W'), before the norm's activation."""
        scale, shift = frozen_bn_scale_shift(self.norm)
        weight = self.weight * scale.view(-1, 1, 1, 1)
        bias = shift if self.bias is None else self.bias * scale + shift
        if self.same_padding:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return self._conv_forward(x, weight, bias)


def _conv_norm_pairs(model: nn.Module) -> List[Tuple[nn.Module, str, str]]:
    """(parent, conv name, norm name) for every plain convolution whose next sibling is a frozen batch norm of
    its output channels."""
    pairs = []
    for parent in model.modules():
        children = list(parent.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if (
                type(conv) in (nn.Conv2d, Conv2dSame)
                and type(norm) in _FROZEN_NORMS
                and norm.weight.numel() == conv.out_channels
            ):
                pairs.append((parent, conv_name, norm_name))
    return pairs


def _fold(model: nn.Module) -> int:
    pairs = _conv_norm_pairs(model)
    for parent, conv_name, norm_name in pairs:
        folded_norm = FoldedFrozenBatchNorm(getattr(parent, norm_name))
        setattr(parent, norm_name, folded_norm)
        setattr(parent, conv_name, FoldedConv2d(getattr(parent, conv_name), folded_norm))
    return len(pairs)


def _outputs(model: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, (list, tuple)) else [out]


def fold_frozen_batch_norms(model: nn.Module, check_size: int = 64, rtol: float = 1e-4) -> int:
    """Fold every frozen batch norm into its convolution, in place; returns how many were folded.

    First on a copy whose norms get random statistics and affine parameters (so that a wrongly paired norm
    shows), compared with the unfolded copy on a random (2, 3, ``check_size``, ``check_size``) input: outputs
    within ``rtol`` of their largest magnitude. A model whose sibling order does not follow its data flow fails
    the check and is left unfolded (logged). A model on the meta device (no storage) is folded unchecked.
    """
    if not _conv_norm_pairs(model):
        return 0
    param = next(model.parameters())
    if param.device.type == "meta":  # a model built without storage (parameter counting) cannot run the check
        return _fold(model)
    generator = torch.Generator().manual_seed(0)
    probe = copy.deepcopy(model).eval()
    for module in probe.modules():
        if type(module) in _FROZEN_NORMS:
            channels = module.weight.numel()
            module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(channels, generator=generator))
            module.running_mean.copy_(torch.randn(channels, generator=generator))
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    x = torch.randn(2, 3, check_size, check_size, generator=generator).to(param.device, param.dtype)
    reference = _outputs(probe, x)
    _fold(probe)
    folded = _outputs(probe, x)
    same = len(reference) == len(folded) and all(
        a.shape == b.shape and float((a - b).abs().max()) <= rtol * max(float(a.abs().max()), 1e-6)
        for a, b in zip(reference, folded)
    )
    if not same:
        logger.warning(
            "Frozen batch norms of %s left unfolded: folding them changes its outputs.", type(model).__name__
        )
        return 0
    return _fold(model)
