"""Wrapper around the compiled ``MultiScaleDeformableAttention`` CUDA op (built from ``ops/``).

Importing this module never fails: the extension is imported lazily on first use, and :func:`is_available` /
:func:`build_hint` say whether it can run here and, if not, why and how to build it. The op computes in float32
or float64; float16/bfloat16 inputs (e.g. under autocast) are cast to float32 for the kernels and the results cast
back to the input dtypes, so half precision costs no accuracy beyond the final rounding.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Optional, Tuple

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["MSDeformAttnFunction", "build_hint", "is_available", "load_op"]

logger = logging.getLogger(__name__)

BUILD_COMMAND = (
    'TORCH_CUDA_ARCH_LIST="8.0;9.0" FORCE_CUDA=1 CUDA_HOME=/usr/local/cuda pip install --no-build-isolation ./ops'
)
_EXTENSION_NAME = "MultiScaleDeformableAttention"
_op: Optional[ModuleType] = None
_import_error: Optional[str] = None
_import_tried = False


def load_op() -> Optional[ModuleType]:
    """The compiled extension module, or None when it cannot be imported (the reason goes to build_hint())."""
    global _op, _import_error, _import_tried
    if not _import_tried:
        _import_tried = True
        try:  # the compiled extension is optional: importing the package must never need it
            import MultiScaleDeformableAttention as op
        except ImportError as exc:
            _import_error = f"{type(exc).__name__}: {exc}"
            logger.debug("MultiScaleDeformableAttention is unavailable: %s", _import_error)
        else:
            _op = op
    return _op


def is_available() -> bool:
    """True when the compiled op imports and a CUDA device is visible."""
    return load_op() is not None and torch.cuda.is_available()


def build_hint() -> str:
    """Why the op is unavailable here (or that it is available) and how to build it."""
    op = load_op()
    if op is None:
        if _import_error is not None and "No module named" in _import_error:
            reason = f"the {_EXTENSION_NAME} extension is not built ({_import_error})"
        else:
            reason = (
                f"importing {_EXTENSION_NAME} failed ({_import_error}); an 'undefined symbol' error means it was "
                "built against another torch/CUDA: rebuild it in this environment"
            )
    elif not torch.cuda.is_available():
        reason = f"no CUDA device: torch {torch.__version__} sees no GPU, and the op runs on CUDA tensors only"
    else:
        return f"{_EXTENSION_NAME} is built ({op.__file__}) and a CUDA device is visible."
    return (
        f"{reason}. Build it from the repository root with `{BUILD_COMMAND}` (FORCE_CUDA=1 builds without a GPU; "
        "set TORCH_CUDA_ARCH_LIST to your GPUs, e.g. 8.0 for A100, 9.0 for H100). A 'no kernel image is "
        "available' error at run time means TORCH_CUDA_ARCH_LIST missed the GPU's architecture."
    )


def _require_op() -> ModuleType:
    op = load_op()
    if op is None:
        raise RuntimeError(f"MultiScaleDeformableAttention op unavailable: {build_hint()}")
    return op


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precision is computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


class MSDeformAttnFunction(torch.autograd.Function):
    """Autograd function of the compiled op; shapes as in ``ms_deform_attn_pytorch``.

    ``apply(value (N, S, M, D), spatial_shapes (L, 2) int64, level_start_index (L,) int64,
    sampling_locations (N, Lq, M, L, P, 2), attention_weights (N, Lq, M, L, P), im2col_step) -> (N, Lq, M * D)``
    in the dtype of ``value``; all tensors on one CUDA device.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        im2col_step: int,
    ) -> torch.Tensor:
        op = _require_op()
        dtype = _compute_dtype(value, sampling_locations, attention_weights)
        inputs = (
            value.to(dtype).contiguous(),
            spatial_shapes.to(device=value.device, dtype=torch.int64).contiguous(),
            level_start_index.to(device=value.device, dtype=torch.int64).contiguous(),
            sampling_locations.to(dtype).contiguous(),
            attention_weights.to(dtype).contiguous(),
        )
        output = op.ms_deform_attn_forward(*inputs, int(im2col_step))
        ctx.im2col_step = int(im2col_step)
        ctx.input_dtypes = (value.dtype, sampling_locations.dtype, attention_weights.dtype)
        ctx.save_for_backward(*inputs)
        return output.to(value.dtype)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_output: torch.Tensor
    ) -> Tuple[torch.Tensor, None, None, torch.Tensor, torch.Tensor, None]:
        op = _require_op()
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = op.ms_deform_attn_backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_output.to(value.dtype).contiguous(),
            ctx.im2col_step,
        )
        value_dtype, locations_dtype, weights_dtype = ctx.input_dtypes
        return (
            grad_value.to(value_dtype),
            None,
            None,
            grad_locations.to(locations_dtype),
            grad_weights.to(weights_dtype),
            None,
        )
