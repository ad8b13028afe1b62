"""The MultiScaleDeformableAttention build (runs on the CPU) and the wrapper's behaviour without the op.

The build checks run only when ``M2F_SIM_CHECK_OPS_BUILD=1`` (CI sets it after ``.ci/build_ops.sh``); the kernels
themselves are tested on a GPU in ``test_ms_deform_attn_cuda.py``.
"""

import importlib
import os

import pytest
import torch

from mask2former_sim.layers import ms_deform_attn_cuda

CHECK_BUILD = os.environ.get("M2F_SIM_CHECK_OPS_BUILD") == "1"
needs_build_check = pytest.mark.skipif(
    not CHECK_BUILD, reason="set M2F_SIM_CHECK_OPS_BUILD=1 after building the op (.ci/build_ops.sh) to check it"
)


def test_wrapper_imports_and_explains_itself() -> None:
    hint = ms_deform_attn_cuda.build_hint()
    assert isinstance(ms_deform_attn_cuda.is_available(), bool)
    if not ms_deform_attn_cuda.is_available():
        assert "pip install --no-build-isolation ./ops" in hint
        assert "FORCE_CUDA=1" in hint


@needs_build_check
def test_extension_imports_and_exposes_forward_backward() -> None:
    op = importlib.import_module("MultiScaleDeformableAttention")
    assert callable(op.ms_deform_attn_forward)
    assert callable(op.ms_deform_attn_backward)
    assert ms_deform_attn_cuda.load_op() is op
    if not torch.cuda.is_available():
        assert "no CUDA device" in ms_deform_attn_cuda.build_hint()


@needs_build_check
def test_extension_rejects_cpu_tensors_with_a_reason() -> None:
    op = importlib.import_module("MultiScaleDeformableAttention")
    value = torch.zeros(1, 6, 2, 4)
    shapes = torch.tensor([[2, 3]])
    starts = torch.zeros(1, dtype=torch.int64)
    locations = torch.zeros(1, 3, 2, 1, 2, 2)
    weights = torch.zeros(1, 3, 2, 1, 2)
    with pytest.raises(RuntimeError, match="expected value on a CUDA device"):
        op.ms_deform_attn_forward(value, shapes, starts, locations, weights, 64)
