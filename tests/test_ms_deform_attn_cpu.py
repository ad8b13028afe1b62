"""The compiled CPU kernels of multi-scale deformable attention against the pure-PyTorch op (itself checked
against naive loops in test_ms_deform_attn.py): values and every gradient, gradcheck, thread-count independence,
dispatch, and a pixel decoder whose losses and gradients agree with the PyTorch path to 1e-4."""

import importlib

import pytest
import torch
from test_ms_deform_attn import _inputs, naive_ms_deform_attn

from mask2former_sim.layers import ms_deform_attn_pytorch
from mask2former_sim.layers.ms_deform_attn_cpu import MSDeformAttnCPUFunction, is_available, load_op
from mask2former_sim.modeling.pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder

msda = importlib.import_module("mask2former_sim.layers.ms_deform_attn")
cpu_kernels = importlib.import_module("mask2former_sim.layers.ms_deform_attn_cpu")

pytestmark = pytest.mark.skipif(not load_op(), reason="the CPU kernels did not compile here (no C++ compiler?)")


def _kernel(*inputs):
    return MSDeformAttnCPUFunction.apply(*inputs)


def _outputs_and_gradients(fn, value, shapes, starts, locations, weights, grad_output):
    leaves = [t.detach().clone().requires_grad_(True) for t in (value, locations, weights)]
    out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
    (out * grad_output).sum().backward()
    return [out.detach()] + [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_kernels_match_pytorch_values_and_gradients(dtype, tol):
    # 3 non-square levels, points inside, on the border and outside the maps, D = 5 (no multiple of the unroll)
    value, shapes, starts, locations, weights = _inputs(n=3, lq=7, m=2, d=5, p=3, dtype=dtype, seed=1, spread=0.6)
    grad_output = torch.randn(3, 7, 2 * 5, dtype=dtype, generator=torch.Generator().manual_seed(2))
    expected = _outputs_and_gradients(ms_deform_attn_pytorch, value, shapes, starts, locations, weights, grad_output)
    got = _outputs_and_gradients(_kernel, value, shapes, starts, locations, weights, grad_output)
    for name, e, g in zip(("output", "d value", "d locations", "d weights"), expected, got):
        assert g.dtype == dtype and g.shape == e.shape, name
        assert torch.allclose(g, e, atol=tol, rtol=tol), f"{name}: max |diff| {(g - e).abs().max():.3g}"


def test_kernels_match_naive_loops():
    inputs = _inputs(dtype=torch.float64, seed=3)
    assert torch.allclose(_kernel(*inputs), naive_ms_deform_attn(*inputs), atol=1e-12, rtol=0)


def test_gradcheck_float64():
    value, shapes, starts, locations, weights = _inputs(dtype=torch.float64, seed=4)
    # keep the points off the integer pixel grid, where bilinear sampling has no derivative
    leaves = [t.requires_grad_(True) for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(lambda v, loc, w: _kernel(v, shapes, starts, loc, w), leaves, eps=1e-6, atol=1e-6)


def test_result_does_not_depend_on_the_number_of_threads():
    value, shapes, starts, locations, weights = _inputs(n=2, lq=50, m=4, d=8, dtype=torch.float32, seed=5)
    grad_output = torch.randn(2, 50, 32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _outputs_and_gradients(_kernel, value, shapes, starts, locations, weights, grad_output)
        torch.set_num_threads(2)
        two = _outputs_and_gradients(_kernel, value, shapes, starts, locations, weights, grad_output)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_half_precision_is_computed_in_float32():
    value, shapes, starts, locations, weights = _inputs(dtype=torch.float32, seed=6)
    half = [t.to(torch.bfloat16) for t in (value, locations, weights)]
    out = _kernel(half[0], shapes, starts, half[1], half[2])
    assert out.dtype == torch.bfloat16
    reference = ms_deform_attn_pytorch(half[0].float(), shapes, starts, half[1].float(), half[2].float())
    assert torch.allclose(out.float(), reference, atol=1e-2)


def test_auto_dispatch_on_cpu_uses_the_kernels_and_falls_back_without_them(monkeypatch):
    value, shapes, starts, locations, weights = _inputs(dtype=torch.float32)
    value.requires_grad_(True)

    def function(out):
        return type(out.grad_fn).__name__

    assert "MSDeformAttnCPUFunction" in function(msda.ms_deform_attn(value, shapes, starts, locations, weights))
    assert "MSDeformAttnCPUFunction" in function(msda.ms_deform_attn(value, shapes, starts, locations, weights, "cpu"))
    pure = msda.ms_deform_attn(value, shapes, starts, locations, weights, impl="pytorch")
    assert "MSDeformAttnCPUFunction" not in function(pure)
    monkeypatch.setattr(cpu_kernels, "_loaded", False)
    monkeypatch.setattr(cpu_kernels, "_error", "no compiler (test)")
    assert not is_available()
    assert torch.equal(msda.ms_deform_attn(value, shapes, starts, locations, weights), pure)
    with pytest.raises(RuntimeError, match="no compiler \\(test\\).*MSDA_IMPL"):
        msda.ms_deform_attn(value, shapes, starts, locations, weights, impl="cpu")


def test_pixel_decoder_with_the_kernels_agrees_with_pytorch_to_1e4():
    """The compiled path's tolerance: the same pixel decoder (2 deformable layers over 3 levels, batch 2) with
    MSDA_IMPL cpu and pytorch gives the same outputs, loss and parameter gradients to 1e-4."""
    from mask2former_sim.layers.shape_spec import ShapeSpec

    shapes = {"res2": ShapeSpec(8, 4), "res3": ShapeSpec(16, 8), "res4": ShapeSpec(24, 16), "res5": ShapeSpec(32, 32)}
    kwargs = dict(
        transformer_dropout=0.0,
        transformer_nheads=4,
        transformer_dim_feedforward=64,
        transformer_enc_layers=2,
        transformer_n_points=4,
        conv_dim=32,
        mask_dim=32,
        norm="GN",
        transformer_in_features=["res3", "res4", "res5"],
        common_stride=4,
    )
    torch.manual_seed(0)
    decoders = {impl: MSDeformAttnPixelDecoder(shapes, msda_impl=impl, **kwargs) for impl in ("cpu", "pytorch")}
    with torch.no_grad():  # offsets off the integer pixel grid of the init, where sampling has no derivative
        for layer in decoders["cpu"].transformer.layers:
            layer.self_attn.sampling_offsets.bias.add_(torch.rand_like(layer.self_attn.sampling_offsets.bias) - 0.5)
    decoders["pytorch"].load_state_dict(decoders["cpu"].state_dict())
    g = torch.Generator().manual_seed(1)
    features = {k: torch.randn(2, s.channels, 96 // s.stride, 64 // s.stride, generator=g) for k, s in shapes.items()}
    results = {}
    for impl, decoder in decoders.items():
        mask_features, _, multi_scale = decoder(features)
        loss = mask_features.square().mean() + sum(x.sin().mean() for x in multi_scale)
        loss.backward()
        results[impl] = (loss.detach(), {n: p.grad for n, p in decoder.named_parameters()})
    assert results["cpu"][0] == pytest.approx(float(results["pytorch"][0]), rel=1e-4, abs=1e-4)
    for name, grad in results["pytorch"][1].items():
        assert torch.allclose(results["cpu"][1][name], grad, rtol=1e-4, atol=1e-4), name
