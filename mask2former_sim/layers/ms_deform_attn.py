"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021): pure PyTorch and dispatch to the CUDA op.

For every query q, head m, level l and point p the op samples the value map of level l bilinearly at
``sampling_locations[q, m, l, p]`` (normalised (x, y) in [0, 1]; zeros outside the map) and sums the samples
weighted by ``attention_weights[q, m, l, p]``:

    out[q, m] = sum_{l, p} A[q, m, l, p] * bilinear(V_l[m], loc[q, m, l, p])

The pure-PyTorch path (``grid_sample``, bilinear, zero padding, ``align_corners=False`` at ``2 * loc - 1``) is
numerically the reference for the compiled kernels and runs anywhere (CPU, Mac, CI). The CUDA op lives in
:mod:`.ms_deform_attn_cuda` (built from ``ops/``), the CPU kernels in :mod:`.ms_deform_attn_cpu` (compiled on first
use); both are loaded lazily, so importing this module never needs either.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from . import ms_deform_attn_cpu, ms_deform_attn_cuda

__all__ = ["ms_deform_attn", "ms_deform_attn_pytorch", "cuda_op_available", "MSDA_IMPLS"]

MSDA_IMPLS = ("auto", "cuda", "cpu", "pytorch")


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    value_spatial_shapes: torch.Tensor,
    value_level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention with ``grid_sample``.

    Args:
        value: (N, S, M, D) values of all levels, flattened level by level (S = sum_l H_l * W_l).
        value_spatial_shapes: (L, 2) int64, (H_l, W_l) per level.
        value_level_start_index: (L,) offset of each level in S (unused here; kept for the op's signature).
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y); points outside [0, 1] sample zeros.
        attention_weights: (N, Lq, M, L, P).

    Returns:
        (N, Lq, M * D).
    """
    del value_level_start_index  # the split sizes come from the shapes
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    shapes: List[List[int]] = value_spatial_shapes.tolist()
    value_list = value.split([h * w for h, w in shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    # (N, Lq, M, L, P) -> (N*M, 1, Lq, L, P), broadcast over D
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels, num_points)
    output = None
    for level, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # (N*M, D, Lq, P)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        # weighted sum over points in the sampled layout, without a permuted copy: (N*M, D, Lq)
        level_out = (sampled * weights[:, :, :, level]).sum(-1)
        output = level_out if output is None else output + level_out
    # (N*M, D, Lq) -> (N, Lq, M*D)
    return output.view(n, m * d, lq).transpose(1, 2).contiguous()


def cuda_op_available() -> bool:
    """True when the compiled ``MultiScaleDeformableAttention`` op can be used."""
    return bool(ms_deform_attn_cuda.is_available())


def _cuda_unavailable_message(reason: str) -> str:
    hint = ms_deform_attn_cuda.build_hint()
    return (
        f"ms_deform_attn(impl='cuda') was requested but {reason}. {hint} "
        "Or set MODEL.SEM_SEG_HEAD.MSDA_IMPL to 'pytorch' (or 'auto') to use the pure-PyTorch implementation."
    )


def _cpu_unavailable_message(reason: str) -> str:
    return (
        f"ms_deform_attn(impl='cpu') was requested but {reason}. Set MODEL.SEM_SEG_HEAD.MSDA_IMPL to 'auto' or "
        "'pytorch' to use the pure-PyTorch implementation."
    )


def ms_deform_attn(
    value: torch.Tensor,
    value_spatial_shapes: torch.Tensor,
    value_level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    impl: str = "auto",
    im2col_step: int = 128,
) -> torch.Tensor:
    """Multi-scale deformable attention, dispatched to the CUDA op, the CPU kernels or :func:`ms_deform_attn_pytorch`.

    Shapes as in :func:`ms_deform_attn_pytorch`; returns (N, Lq, M * D).

    Args:
        impl: "auto" (on CUDA the op when it is built, on the CPU the compiled kernels when they compile, else
            PyTorch), "cuda" (the op or a ``RuntimeError`` that says how to build it), "cpu" (the CPU kernels or a
            ``RuntimeError`` that says why they did not compile), "pytorch" (always PyTorch; also what tracing and
            ONNX export use).
        im2col_step: batch chunk of the CUDA op (ignored by the PyTorch path).
    """
    if impl not in MSDA_IMPLS:
        raise ValueError(
            f"ms_deform_attn: impl must be one of {MSDA_IMPLS}, got {impl!r} (config key MODEL.SEM_SEG_HEAD.MSDA_IMPL)"
        )
    use_cuda = use_cpu = False
    if impl == "cpu":
        if value.is_cuda:
            raise RuntimeError(_cpu_unavailable_message("the value tensor is on CUDA"))
        if not ms_deform_attn_cpu.is_available():
            raise RuntimeError(
                _cpu_unavailable_message(f"the kernels are unavailable ({ms_deform_attn_cpu.unavailable_reason()})")
            )
        use_cpu = True
    elif impl == "cuda":
        if not value.is_cuda:
            raise RuntimeError(_cuda_unavailable_message(f"the value tensor is on {value.device}, not on CUDA"))
        if not cuda_op_available():
            raise RuntimeError(_cuda_unavailable_message("the compiled op is not available"))
        use_cuda = True
    elif impl == "auto" and not torch.jit.is_tracing():
        if value.is_cuda:
            use_cuda = cuda_op_available()
        else:
            use_cpu = value.device.type == "cpu" and ms_deform_attn_cpu.is_available()
    if use_cpu:
        return ms_deform_attn_cpu.MSDeformAttnCPUFunction.apply(
            value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights
        )
    if use_cuda:
        return ms_deform_attn_cuda.MSDeformAttnFunction.apply(
            value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights, im2col_step
        )
    return ms_deform_attn_pytorch(
        value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights
    )
