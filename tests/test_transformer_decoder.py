"""MultiScaleMaskedTransformerDecoder: heads, round-robin levels, attention masks, mask einsum."""

import torch

from mask2former_sim.modeling.transformer_decoder import MultiScaleMaskedTransformerDecoder


def _decoder(dec_layers=5, mask_classification=True):
    torch.manual_seed(0)
    return MultiScaleMaskedTransformerDecoder(
        in_channels=32,
        num_classes=7,
        hidden_dim=32,
        num_queries=6,
        nheads=4,
        dim_feedforward=64,
        dec_layers=dec_layers,
        pre_norm=False,
        mask_dim=16,
        enforce_input_project=False,
        mask_classification=mask_classification,
    )


def _inputs():
    torch.manual_seed(1)
    x = [torch.randn(2, 32, 2, 3), torch.randn(2, 32, 4, 6), torch.randn(2, 32, 8, 12)]
    return x, torch.randn(2, 16, 16, 24)


def test_outputs_and_aux_heads():
    out = _decoder(dec_layers=5)(*_inputs())
    assert out["pred_logits"].shape == (2, 6, 8)
    assert out["pred_masks"].shape == (2, 6, 16, 24)
    assert len(out["aux_outputs"]) == 4
    assert all(a["pred_masks"].shape == (2, 6, 16, 24) for a in out["aux_outputs"])


def test_layers_attend_to_levels_round_robin():
    decoder = _decoder(dec_layers=5)
    seen = []
    for layer in decoder.transformer_cross_attention_layers:
        layer.register_forward_hook(lambda mod, args, kwargs, out: seen.append(args[1].shape[0]), with_kwargs=True)
    decoder(*_inputs())
    assert seen == [6, 24, 96, 6]  # strides 32, 16, 8, 32


def test_first_head_is_linear_in_mask_features():
    decoder = _decoder()
    x, mask_features = _inputs()
    head0 = decoder(x, mask_features)["aux_outputs"][0]
    head0_doubled = decoder(x, 2 * mask_features)["aux_outputs"][0]
    assert torch.allclose(head0_doubled["pred_masks"], 2 * head0["pred_masks"], atol=1e-5)
    # the first head sees only the learnable queries: its class logits do not depend on the image
    other = decoder([t + 1 for t in x], mask_features)["aux_outputs"][0]
    assert torch.allclose(other["pred_logits"], head0["pred_logits"])


def test_attention_mask_is_sigmoid_below_half_at_next_level():
    decoder = _decoder()
    queries = torch.randn(6, 2, 32)
    mask_features = torch.randn(2, 16, 16, 24)
    _, masks, attn_mask = decoder.forward_prediction_heads(queries, mask_features, (4, 6))
    resized = torch.nn.functional.interpolate(masks, size=(4, 6), mode="bilinear", align_corners=False)
    expected = (resized.sigmoid() < 0.5).flatten(2)  # (B, Q, hw)
    assert attn_mask.shape == (2 * 4, 6, 24)
    for b in range(2):
        for h in range(4):
            assert torch.equal(attn_mask[b * 4 + h], expected[b])
    assert not attn_mask.requires_grad
    # a head without predictions gets it from the resized mask features (resize(e·F) = e·resize(F))
    at_level = torch.nn.functional.interpolate(mask_features, size=(4, 6), mode="bilinear", align_corners=False)
    assert torch.equal(decoder.attention_mask(queries, at_level), attn_mask)


def test_fully_masked_queries_attend_everywhere():
    decoder = _decoder()
    with torch.no_grad():  # every predicted mask empty → every attention row fully masked
        decoder.mask_embed.layers[-1].weight.zero_()
        decoder.mask_embed.layers[-1].bias.fill_(-1.0)
    x, _ = _inputs()
    out = decoder(x, torch.ones(2, 16, 16, 24))
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_masks"]).all()


def test_without_classification():
    out = _decoder(dec_layers=2, mask_classification=False)(*_inputs())
    assert out["pred_logits"] is None and len(out["aux_outputs"]) == 1


def test_last_head_only_gives_the_same_predictions():
    # inference: the other heads give only attention masks, from the mask features resized to each level
    decoder = _decoder(dec_layers=5)
    x, mask_features = _inputs()
    every = decoder(x, mask_features)
    last = decoder(x, mask_features, all_heads=False)
    assert last["aux_outputs"] == []
    assert torch.allclose(last["pred_logits"], every["pred_logits"], atol=1e-5)
    assert torch.allclose(last["pred_masks"], every["pred_masks"], atol=1e-5)


def test_last_head_has_no_attention_mask():
    _, masks, attn_mask = _decoder().forward_prediction_heads(torch.randn(6, 2, 32), torch.randn(2, 16, 16, 24), None)
    assert attn_mask is None and masks.shape == (2, 6, 16, 24)
