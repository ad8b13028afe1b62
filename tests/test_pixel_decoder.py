"""MSDeformAttnPixelDecoder and the sine position encoding: shapes, strides, fp32 under autocast, hand values."""

import math

import torch

from mask2former_sim.config import get_cfg
from mask2former_sim.layers import ShapeSpec
from mask2former_sim.modeling.pixel_decoder import MSDeformAttnPixelDecoder, PositionEmbeddingSine

INPUT_SHAPE = {"res2": ShapeSpec(8, 4), "res3": ShapeSpec(16, 8), "res4": ShapeSpec(24, 16), "res5": ShapeSpec(32, 32)}


def _decoder():
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 64
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 48
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 2
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 128
    cfg.MODEL.SEM_SEG_HEAD.MSDA_IMPL = "pytorch"
    return MSDeformAttnPixelDecoder.from_config(cfg, INPUT_SHAPE)


def _features(h=64, w=96):
    torch.manual_seed(0)
    return {k: torch.randn(2, s.channels, h // s.stride, w // s.stride) for k, s in INPUT_SHAPE.items()}


def test_output_shapes_and_strides():
    decoder = _decoder()
    mask_features, encoder_out, multi_scale = decoder.forward_features(_features())
    assert mask_features.shape == (2, 48, 16, 24)
    assert encoder_out.shape == (2, 64, 2, 3)
    assert [tuple(x.shape) for x in multi_scale] == [(2, 64, 2, 3), (2, 64, 4, 6), (2, 64, 8, 12)]
    assert decoder.transformer.layers[0].self_attn.impl == "pytorch"
    assert len(decoder.input_proj) == 3 and decoder.input_proj[0][0].in_channels == 32  # res5 first


def test_runs_in_fp32_under_autocast():
    decoder = _decoder()
    features = {k: v.bfloat16() for k, v in _features().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, _, multi_scale = decoder.forward_features(features)
    assert mask_features.dtype == torch.float32 and all(x.dtype == torch.float32 for x in multi_scale)


def test_gradients_reach_every_parameter():
    decoder = _decoder()
    mask_features, _, multi_scale = decoder(_features(32, 32))
    (mask_features.sum() + sum(x.sum() for x in multi_scale)).backward()
    no_grad = [n for n, p in decoder.named_parameters() if p.grad is None]
    assert no_grad == []


def test_sine_encoding_hand_value():
    pe = PositionEmbeddingSine(num_pos_feats=4, normalize=True)
    out = pe(torch.zeros(1, 1, 2, 4))
    assert out.shape == (1, 8, 2, 4)
    # pixel (row 1, col 2): y = 2/2 * 2pi, x = 3/4 * 2pi; channels (sin, cos) at frequencies 1 and 1/100
    y, x = 2 * math.pi * 2 / (2 + 1e-6), 2 * math.pi * 3 / (4 + 1e-6)
    expected = [
        math.sin(y),
        math.cos(y),
        math.sin(y / 100),
        math.cos(y / 100),
        math.sin(x),
        math.cos(x),
        math.sin(x / 100),
        math.cos(x / 100),
    ]
    assert torch.allclose(out[0, :, 1, 2], torch.tensor(expected), atol=1e-5)


def test_sine_encoding_without_mask_is_the_same_for_every_image():
    pe = PositionEmbeddingSine(num_pos_feats=4, normalize=True)
    out = pe(torch.zeros(3, 1, 2, 4))
    explicit = pe(torch.zeros(3, 1, 2, 4), mask=torch.zeros(3, 2, 4, dtype=torch.bool))
    assert out.shape == (3, 8, 2, 4)
    assert torch.equal(out, explicit)
