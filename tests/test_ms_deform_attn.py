"""Multi-scale deformable attention: the pure-PyTorch op against a naive loop reference, gradcheck, dispatch,
and the ``MSDeformAttn`` module's location arithmetic."""

import importlib
import math

import pytest
import torch

from mask2former_sim.layers import ms_deform_attn, ms_deform_attn_pytorch
from mask2former_sim.modeling.pixel_decoder.ms_deform_attn_module import MSDeformAttn

SHAPES = [(4, 5), (3, 2), (1, 3)]


def _inputs(shapes=SHAPES, n=2, lq=3, m=2, d=3, p=2, dtype=torch.float64, seed=0, spread=0.3):
    """Random inputs; sampling locations span [-spread, 1 + spread] so some points fall outside the maps."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    level_start_index = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
    s = int(spatial_shapes.prod(1).sum())
    num_levels = len(shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=dtype)
    locations = torch.rand(n, lq, m, num_levels, p, 2, generator=g, dtype=dtype) * (1 + 2 * spread) - spread
    weights = torch.rand(n, lq, m, num_levels, p, generator=g, dtype=dtype) + 1e-5
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, spatial_shapes, level_start_index, locations, weights


def naive_ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights):
    """Explicit loops: bilinear sampling at pixel coordinates (x * W - 0.5, y * H - 0.5), zero outside."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = locations.shape
    out = torch.zeros(n, lq, m, d, dtype=value.dtype)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl in range(num_levels):
                    h, w = (int(v) for v in spatial_shapes[lvl])
                    start = int(level_start_index[lvl])
                    for pt in range(num_points):
                        x = float(locations[b, q, head, lvl, pt, 0]) * w - 0.5
                        y = float(locations[b, q, head, lvl, pt, 1]) * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(d, dtype=value.dtype)
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < h and 0 <= xx < w:
                                bilinear = (1 - abs(x - xx)) * (1 - abs(y - yy))
                                sample += bilinear * value[b, start + yy * w + xx, head]
                        out[b, q, head] += weights[b, q, head, lvl, pt] * sample
    return out.reshape(n, lq, m * d)


def test_pytorch_matches_naive_loops_float64():
    inputs = _inputs()
    expected = naive_ms_deform_attn(*inputs)
    got = ms_deform_attn_pytorch(*inputs)
    assert got.shape == (2, 3, 2 * 3)
    assert torch.allclose(got, expected, atol=1e-10, rtol=0)


def test_points_far_outside_sample_zero():
    value, shapes, start, locations, weights = _inputs()
    locations = torch.full_like(locations, 1.5)  # every point more than one pixel outside every level
    assert torch.equal(
        ms_deform_attn_pytorch(value, shapes, start, locations, weights), torch.zeros(2, 3, 6, dtype=torch.float64)
    )


def test_pixel_centre_returns_the_pixel_value():
    """A single point at the centre of pixel (row 2, col 3) of a 4x5 map with weight 1 returns that pixel."""
    value, shapes, start, _, _ = _inputs(shapes=[(4, 5)], n=1, lq=1, m=1, p=1)
    locations = torch.tensor([(3 + 0.5) / 5, (2 + 0.5) / 4], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    weights = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    out = ms_deform_attn_pytorch(value, shapes, start, locations, weights)
    assert torch.allclose(out[0, 0], value[0, 2 * 5 + 3, 0], atol=1e-12)


def test_matches_transformers_reference():
    modeling = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    value, shapes, start, locations, weights = _inputs(dtype=torch.float32, seed=1)
    expected = modeling.multi_scale_deformable_attention(value, [tuple(s) for s in shapes.tolist()], locations, weights)
    got = ms_deform_attn_pytorch(value, shapes, start, locations, weights)
    assert torch.allclose(got, expected, atol=1e-6)


def test_gradcheck_float64():
    value, shapes, start, locations, weights = _inputs(shapes=[(3, 4), (2, 2)], n=1, lq=2, m=2, d=2, p=2, seed=3)
    value.requires_grad_(True)
    locations.requires_grad_(True)
    weights.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, loc, a: ms_deform_attn_pytorch(v, shapes, start, loc, a),
        (value, locations, weights),
        eps=1e-6,
        atol=1e-6,
    )


def test_pytorch_dispatch_is_the_pure_pytorch_path():
    inputs = _inputs(dtype=torch.float32)
    assert torch.equal(ms_deform_attn(*inputs, impl="pytorch"), ms_deform_attn_pytorch(*inputs))


def test_cuda_impl_on_cpu_raises_with_build_hint():
    inputs = _inputs(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="MSDA_IMPL") as info:
        ms_deform_attn(*inputs, impl="cuda")
    assert "cuda" in str(info.value).lower()


def test_cuda_impl_without_the_compiled_op_raises_and_auto_falls_back(monkeypatch):
    # the package re-exports the function under the module's name; fetch the module itself
    msda = importlib.import_module("mask2former_sim.layers.ms_deform_attn")
    monkeypatch.setattr(msda.ms_deform_attn_cuda, "is_available", lambda: False)
    monkeypatch.setattr(msda.ms_deform_attn_cpu, "is_available", lambda: False)  # the CPU kernels: their own test
    assert not msda.cuda_op_available()
    inputs = _inputs(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="MSDA_IMPL"):
        msda.ms_deform_attn(*inputs, impl="cuda")
    assert torch.equal(msda.ms_deform_attn(*inputs, impl="auto"), ms_deform_attn_pytorch(*inputs))


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="impl"):
        ms_deform_attn(*_inputs(), impl="triton")


def test_module_offsets_are_in_pixels_of_each_level():
    """With zero offsets/attention parameters except a +1 pixel x-offset, one head, one point, the module
    reads the right-hand neighbour of the reference pixel on every level (offset normalised by W_l)."""
    torch.manual_seed(0)
    shapes = torch.tensor([(4, 6), (2, 3)], dtype=torch.long)
    start = torch.tensor([0, 24])
    attn = MSDeformAttn(d_model=4, n_levels=2, n_heads=1, n_points=1, impl="pytorch").double()
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0, 1.0, 0.0]))
        attn.value_proj.weight.copy_(torch.eye(4))
        attn.output_proj.weight.copy_(torch.eye(4))
    src = torch.randn(1, 30, 4, dtype=torch.float64)
    # reference: centre of pixel (row 1, col 2) of level 0 and of pixel (row 0, col 1) of level 1
    ref = torch.tensor([[(2.5 / 6, 1.5 / 4), (1.5 / 3, 0.5 / 2)]], dtype=torch.float64).view(1, 1, 2, 2)
    out = attn(torch.zeros(1, 1, 4, dtype=torch.float64), ref, src, shapes, start)
    # softmax over 2 levels x 1 point of zero logits = 0.5 each; neighbours at (1, 3) and (0, 2)
    expected = 0.5 * src[0, 1 * 6 + 3] + 0.5 * src[0, 24 + 0 * 3 + 2]
    assert torch.allclose(out[0, 0], expected, atol=1e-12)


def test_module_init_is_circular_grid():
    attn = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2)
    bias = attn.sampling_offsets.bias.view(4, 3, 2, 2)
    # head 1 points along +y (angle pi/2), second point twice as far as the first
    assert torch.allclose(bias[1, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6)
    assert torch.allclose(bias[1, 2, 1], torch.tensor([0.0, 2.0]), atol=1e-6)
    assert torch.allclose(bias[2, 1, 0], torch.tensor([-1.0, 0.0]), atol=1e-6)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
