"""The compiled MultiScaleDeformableAttention op against the pure-PyTorch (grid_sample) path.

Forward equality in float64 and float32, gradients equal to PyTorch autograd, and ``gradcheck`` in float64 for
channel counts that exercise every kernel path: packed channels (16-byte loads, D divisible by 4 floats or 2
doubles, aligned rows) or one channel per thread, and the backward reductions (warp shuffles when a group's
threads divide 32; shared-memory tree for other D <= 1024; global atomics for D > 1024). Needs a CUDA device and
the built op; skipped otherwise.
"""

from typing import Sequence, Tuple

import pytest
import torch

from mask2former_sim.layers import ms_deform_attn_cuda
from mask2former_sim.layers.ms_deform_attn import ms_deform_attn_pytorch

if not torch.cuda.is_available():
    pytest.skip(
        f"no CUDA device: torch {torch.__version__} sees no GPU, and the op's kernels need one", allow_module_level=True
    )
if not ms_deform_attn_cuda.is_available():
    pytest.skip(
        f"MultiScaleDeformableAttention op not built: {ms_deform_attn_cuda.build_hint()}", allow_module_level=True
    )

MSDeformAttnFunction = ms_deform_attn_cuda.MSDeformAttnFunction
SHAPES = [(6, 4), (3, 2)]  # (H, W) per level, as the official Deformable DETR test
GRADCHECK_CHANNELS = [30, 32, 64, 71, 1025, 2048, 3096]
Inputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_inputs(
    batch: int,
    heads: int,
    channels: int,
    queries: int,
    shapes: Sequence[Tuple[int, int]],
    points: int,
    dtype: torch.dtype,
    seed: int = 3,
) -> Inputs:
    """Random (value, spatial_shapes, level_start_index, sampling_locations, attention_weights) on CUDA.

    Locations lie in [-0.1, 1.1] so that some samples straddle or leave the maps (zero padding).
    """
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    levels = len(shapes)
    value = torch.rand(batch, int(areas.sum()), heads, channels, generator=generator, dtype=torch.float64) * 0.01
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=generator, dtype=torch.float64)
    locations = locations * 1.2 - 0.1
    weights = torch.rand(batch, queries, heads, levels, points, generator=generator, dtype=torch.float64) + 1e-5
    weights = weights / weights.sum((-1, -2), keepdim=True)
    device = torch.device("cuda")
    return (
        value.to(device, dtype),
        spatial_shapes.to(device),
        level_start_index.to(device),
        locations.to(device, dtype),
        weights.to(device, dtype),
    )


def run_op(inputs: Inputs, im2col_step: int = 2) -> torch.Tensor:
    return MSDeformAttnFunction.apply(*inputs, im2col_step)


def misaligned_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t whose data starts one element past a 16-byte boundary (disables packed kernels)."""
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    copy = buffer[1:].view_as(t).copy_(t)
    assert copy.is_contiguous() and copy.data_ptr() % 16 != 0
    return copy


def grads_of(fn, inputs: Inputs, grad_out: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """(dL/dvalue, dL/dsampling_locations, dL/dattention_weights) of L = <fn(inputs), grad_out>."""
    value, shapes, starts, locations, weights = inputs
    value, locations, weights = (t.detach().requires_grad_(True) for t in (value, locations, weights))
    fn(value, shapes, starts, locations, weights).backward(grad_out)
    return value.grad, locations.grad, weights.grad


GRAD_NAMES = ("value", "sampling_locations", "attention_weights")


@pytest.mark.parametrize("channels", [2, 32, 71])
def test_forward_equals_pytorch_double(channels: int) -> None:
    inputs = make_inputs(1, 2, channels, 2, SHAPES, 2, torch.float64)
    torch.testing.assert_close(run_op(inputs), ms_deform_attn_pytorch(*inputs), rtol=0, atol=1e-10)


@pytest.mark.parametrize("channels", [2, 32, 71])
def test_forward_equals_pytorch_float(channels: int) -> None:
    inputs = make_inputs(1, 2, channels, 2, SHAPES, 2, torch.float32)
    torch.testing.assert_close(run_op(inputs), ms_deform_attn_pytorch(*inputs), rtol=1e-2, atol=1e-3)


def test_forward_realistic_shapes_and_batch_chunks() -> None:
    """Three levels, 8 heads, 4 points; batch 3 split into chunks of 2 (im2col_step) and of 1."""
    inputs = make_inputs(3, 8, 32, 50, [(16, 20), (8, 10), (4, 5)], 4, torch.float64, seed=7)
    expected = ms_deform_attn_pytorch(*inputs)
    for im2col_step in (1, 2, 64):
        torch.testing.assert_close(run_op(inputs, im2col_step), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("channels", [1, 4, 32, 30, 64, 1025])
def test_backward_equals_pytorch_autograd_double(channels: int) -> None:
    inputs = make_inputs(3, 2, channels, 5, [(6, 4), (3, 2), (2, 2)], 3, torch.float64, seed=11)
    grad_out = torch.randn(3, 5, 2 * channels, dtype=torch.float64, device="cuda")
    got = grads_of(lambda *x: run_op(x, 2), inputs, grad_out)
    expected = grads_of(ms_deform_attn_pytorch, inputs, grad_out)
    for g, e, name in zip(got, expected, GRAD_NAMES):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("channels", [2, 32, 30, 64, 128])
@pytest.mark.parametrize("aligned", [True, False])
def test_float_forward_backward_equal_double_reference(channels: int, aligned: bool) -> None:
    """float32 op (packed and, with a misaligned value, one channel per thread) vs float64 PyTorch."""
    inputs = make_inputs(2, 4, channels, 40, [(16, 20), (8, 10), (4, 5)], 4, torch.float64, seed=13)
    grad_out = torch.randn(2, 40, 4 * channels, dtype=torch.float64, device="cuda")
    value, *rest = (t.float() if t.is_floating_point() else t for t in inputs)
    float_inputs = (value if aligned else misaligned_copy(value), *rest)
    torch.testing.assert_close(run_op(float_inputs).double(), ms_deform_attn_pytorch(*inputs), rtol=1e-4, atol=1e-6)
    got = grads_of(lambda *x: run_op(x, 2), float_inputs, grad_out.float())
    expected = grads_of(ms_deform_attn_pytorch, inputs, grad_out)
    for g, e, name in zip(got, expected, GRAD_NAMES):
        scale = float(e.abs().max())
        torch.testing.assert_close(g.double(), e, rtol=1e-3, atol=1e-5 * scale, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("wrt", ["value", "sampling_locations", "attention_weights"])
@pytest.mark.parametrize("channels", GRADCHECK_CHANNELS)
def test_gradcheck_double(channels: int, wrt: str) -> None:
    value, shapes, starts, locations, weights = make_inputs(1, 2, channels, 2, SHAPES, 2, torch.float64)
    tensors = {"value": value, "sampling_locations": locations, "attention_weights": weights}
    tensors[wrt].requires_grad_(True)

    def fn(v: torch.Tensor, loc: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        return MSDeformAttnFunction.apply(v, shapes, starts, loc, attn, 2)

    # value has N*S*M*D inputs (up to 186k): check a random projection of its Jacobian for large D.
    fast_mode = wrt == "value" and channels > 64
    # Double atomics sum in a varying order: backward is reproducible only to rounding.
    assert torch.autograd.gradcheck(fn, (value, locations, weights), fast_mode=fast_mode, nondet_tol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float(dtype: torch.dtype) -> None:
    inputs = make_inputs(2, 8, 32, 30, [(16, 20), (8, 10)], 4, torch.float32, seed=5)
    value, shapes, starts, locations, weights = inputs
    half_value = value.to(dtype).requires_grad_(True)
    output = MSDeformAttnFunction.apply(half_value, shapes, starts, locations, weights, 64)
    assert output.dtype == dtype
    expected = ms_deform_attn_pytorch(half_value.detach().float(), shapes, starts, locations, weights)
    torch.testing.assert_close(output.float(), expected, rtol=1e-2, atol=1e-3)
    output.float().sum().backward()
    assert half_value.grad is not None and half_value.grad.dtype == dtype


def test_cpu_tensor_is_rejected_with_a_reason() -> None:
    inputs = tuple(t.cpu() for t in make_inputs(1, 2, 4, 2, SHAPES, 2, torch.float32))
    with pytest.raises(RuntimeError, match="CUDA device"):
        MSDeformAttnFunction.apply(*inputs, 2)
