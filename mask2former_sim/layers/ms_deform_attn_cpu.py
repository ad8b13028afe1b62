"""The CPU kernels of multi-scale deformable attention (``csrc/ms_deform_attn_cpu.cpp``), compiled on first use.

The pure-PyTorch path (:func:`~.ms_deform_attn.ms_deform_attn_pytorch`) samples every point of every query with
``grid_sample`` into a (N·M, D, Lq, P) tensor, multiplies it by the attention weights and sums it, and its
backward builds the same tensors again: on a CPU that costs 4-6x the kernels here, which accumulate each sample
straight into its output (docs/PERFORMANCE.md). The kernels are compiled with the C++ compiler torch uses
(``torch.utils.cpp_extension.load``, ninja; about 10 s once per machine, cached under ``TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``) the first time they are needed; ``tools/setup_env.sh`` does it during set-up.
Importing this module never compiles anything, and when compiling fails :func:`is_available` is False and
:func:`unavailable_reason` says why (``MODEL.SEM_SEG_HEAD.MSDA_IMPL auto`` then falls back to PyTorch).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Optional, Tuple

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["MSDeformAttnCPUFunction", "is_available", "load_op", "unavailable_reason"]

logger = logging.getLogger(__name__)

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "ms_deform_attn_cpu.cpp")
_EXTENSION_NAME = "m2f_sim_msda_cpu"
_lock = threading.Lock()
_loaded: Optional[bool] = None
_error: Optional[str] = None


def _put_ninja_on_path() -> None:
    """torch builds with the ``ninja`` on PATH: add the pip package's (requirements.txt), which an environment that
    is not activated (``.venv/bin/python train_net.py``) does not have on PATH."""
    try:
        import ninja
    except ImportError:
        return
    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path]) if path else ninja.BIN_DIR


def load_op() -> bool:
    """Compile (first call on a machine) and load the kernels; True when ``torch.ops.m2f_sim_cpu`` has them.

    Set ``M2F_SIM_MSDA_CPU=0`` to never compile them (``auto`` then uses the PyTorch path).
    """
    global _loaded, _error
    if _loaded is not None:  # every forward asks: answer without the lock once it is known
        return _loaded
    with _lock:
        if _loaded is None:
            if os.environ.get("M2F_SIM_MSDA_CPU", "1") == "0":
                _loaded, _error = False, "disabled by M2F_SIM_MSDA_CPU=0"
                return _loaded
            try:
                cpp_logger = logging.getLogger("torch.utils.cpp_extension")
                level = cpp_logger.level
                cpp_logger.setLevel(logging.ERROR)  # its import warns that a CPU-only machine has no CUDA runtime
                try:
                    from torch.utils import cpp_extension
                finally:
                    cpp_logger.setLevel(level)

                _put_ninja_on_path()
                logger.info("loading the CPU deformable-attention kernels (compiled once per machine, about 10 s)")
                cpp_extension.load(
                    name=_EXTENSION_NAME,
                    sources=[_SOURCE],
                    extra_cflags=["-O3", "-fopenmp"],  # no -march=native: the same numbers on every x86-64 machine
                    extra_ldflags=["-fopenmp"],  # at::parallel_for runs on torch's OpenMP threads
                    is_python_module=False,
                    verbose=False,
                )
                _loaded = hasattr(torch.ops.m2f_sim_cpu, "ms_deform_attn_forward")
                if not _loaded:
                    _error = "the compiled library did not register torch.ops.m2f_sim_cpu.ms_deform_attn_forward"
            except Exception as exc:  # a missing compiler, ninja or Python headers: fall back, say why
                _loaded, _error = False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
            if not _loaded:
                logger.warning(
                    "the CPU deformable-attention kernels are unavailable (%s); using the slower pure-PyTorch path",
                    _error,
                )
        return _loaded


def is_available() -> bool:
    """True when the kernels are compiled and loaded (compiles them on the first call)."""
    return load_op()


def unavailable_reason() -> Optional[str]:
    """Why the kernels could not be loaded, or None (call :func:`load_op` first)."""
    return _error


class MSDeformAttnCPUFunction(torch.autograd.Function):
    """Autograd function over the CPU kernels; shapes as in :func:`~.ms_deform_attn.ms_deform_attn_pytorch`.

    float32 and float64 run as they are; other floating dtypes are computed in float32 and cast back.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        value: torch.Tensor,
        value_spatial_shapes: torch.Tensor,
        value_level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
    ) -> torch.Tensor:
        dtype = value.dtype if value.dtype in (torch.float32, torch.float64) else torch.float32
        ctx.dtypes = (value.dtype, sampling_locations.dtype, attention_weights.dtype)
        value_c, loc_c, attn_c = value.to(dtype), sampling_locations.to(dtype), attention_weights.to(dtype)
        ctx.save_for_backward(value_c, value_spatial_shapes, value_level_start_index, loc_c, attn_c)
        output = torch.ops.m2f_sim_cpu.ms_deform_attn_forward(
            value_c, value_spatial_shapes, value_level_start_index, loc_c, attn_c
        )
        return output.to(value.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_output: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        value, shapes, starts, loc, attn = ctx.saved_tensors
        grad_value, grad_loc, grad_attn = torch.ops.m2f_sim_cpu.ms_deform_attn_backward(
            value, shapes, starts, loc, attn, grad_output
        )
        value_dtype, loc_dtype, attn_dtype = ctx.dtypes
        return grad_value.to(value_dtype), None, None, grad_loc.to(loc_dtype), grad_attn.to(attn_dtype)
