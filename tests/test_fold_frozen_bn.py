"""Frozen batch norms folded into their convolutions: the same features and gradients as timm's frozen norms,
the same state dict, checkpoints and copies that stay consistent, and no fold where the pairing is wrong."""

import copy

import pytest
import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from mask2former_sim.modeling.backbone import TimmBackbone
from mask2former_sim.modeling.backbone.fold_frozen_bn import (
    FoldedConv2d,
    FoldedFrozenBatchNorm,
    fold_frozen_batch_norms,
    frozen_bn_scale_shift,
)

FROZEN = ("FrozenBatchNormAct2d", "FrozenBatchNorm2d", "FoldedFrozenBatchNorm")


def _randomise_norms(model, seed):
    """Non-trivial statistics and affine parameters in every frozen norm (the default ones are ~identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ in FROZEN:
                c = m.weight.numel()
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def _reference_and_folded(name):
    """timm's frozen model (the reference) and our backbone with the same weights and statistics."""
    torch.manual_seed(0)
    backbone = TimmBackbone(name, ["res2", "res3", "res4", "res5"], freeze_bn=True)
    reference = freeze_batch_norm_2d(timm.create_model(name, features_only=True))
    _randomise_norms(backbone.model, 1)
    reference.load_state_dict(backbone.model.state_dict())
    return reference, backbone


@pytest.mark.parametrize("name,folded", [("tf_efficientnet_lite0", 48), ("resnet18", 20)])
def test_folded_backbone_gives_the_features_and_gradients_of_frozen_batch_norms(name, folded):
    reference, backbone = _reference_and_folded(name)
    assert sum(isinstance(m, FoldedFrozenBatchNorm) for m in backbone.modules()) == folded
    assert sum(isinstance(m, FoldedConv2d) for m in backbone.modules()) == folded
    assert set(backbone.model.state_dict()) == set(reference.state_dict())  # checkpoints load as before
    x = torch.randn(2, 3, 64, 96)
    ours = backbone.model(x)  # every timm feature level
    theirs = reference(x)
    assert len(ours) == len(theirs)
    for feature, expected in zip(ours, theirs):
        assert torch.allclose(feature, expected, rtol=1e-4, atol=1e-4 * float(expected.detach().abs().max()))
    sum(f.square().mean() for f in ours).backward()
    sum(f.square().mean() for f in theirs).backward()
    for (key, p), q in zip(backbone.model.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-4 * float(q.grad.abs().max())), key


def test_folded_conv_is_conv_then_norm_by_hand():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    norm = FrozenBatchNorm2d(4)
    _randomise_norms(nn.Sequential(norm), 2)
    folded = FoldedConv2d(conv, FoldedFrozenBatchNorm(norm))
    x = torch.randn(2, 3, 5, 6)
    y = conv(x)
    by_hand = (y - norm.running_mean[:, None, None]) / torch.sqrt(norm.running_var[:, None, None] + norm.eps)
    by_hand = by_hand * norm.weight[:, None, None] + norm.bias[:, None, None]
    assert torch.allclose(folded(x), by_hand, atol=1e-5)
    scale, shift = frozen_bn_scale_shift(norm)
    assert torch.allclose(norm(y), y * scale[:, None, None] + shift[:, None, None], atol=1e-6)


def test_loaded_statistics_and_copies_take_effect():
    """The fold is recomputed at every forward: a checkpoint loaded afterwards, or a deep copy's own statistics,
    are what the convolutions use."""
    reference, backbone = _reference_and_folded("resnet18")
    _randomise_norms(reference, 3)
    backbone.model.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for feature, expected in zip(backbone.model(x), reference(x)):
            assert torch.allclose(feature, expected, rtol=1e-4, atol=1e-4 * float(expected.detach().abs().max()))
        twin = copy.deepcopy(backbone)
        before = backbone(x)["res5"].clone()
        _randomise_norms(twin.model, 4)
        assert torch.equal(backbone(x)["res5"], before)  # the copy's convolutions read the copy's norms
        assert not torch.allclose(twin(x)["res5"], before)
        for m in twin.modules():
            if isinstance(m, FoldedConv2d):
                assert any(m.norm is n for n in twin.modules())


class _Crossed(nn.Module):
    """conv_a is registered right before the norm, but the norm normalises conv_b's output."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = FrozenBatchNorm2d(8)
        self.conv_b = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.norm(self.conv_b(x)) + self.conv_a(x)


def test_sibling_order_unlike_the_data_flow_is_left_unfolded():
    torch.manual_seed(0)
    model = _Crossed()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
        assert fold_frozen_batch_norms(model) == 0
        assert isinstance(model.norm, FrozenBatchNorm2d) and type(model.conv_a) is nn.Conv2d
        assert torch.equal(model(x), before)
