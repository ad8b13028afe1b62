"""Official Mask2Former checkpoints through ``MODEL.WEIGHTS``: the name table (mask2former_sim/interop/official.py)
against names written out by hand from the official code (detectron2's ResNet, D2SwinTransformer, the MSDeformAttn
pixel decoder and the predictor), detectron2 ``.pkl`` and ``.pth`` files, the class head of another size, shape
mismatches, strict loading for inference, and SIM's teacher built from the loaded student."""

import os
import pickle

import pytest
import torch

from mask2former_sim.config import get_cfg
from mask2former_sim.engine.checkpoint import CheckpointError, load_model_weights
from mask2former_sim.interop.official import OfficialNames, from_official, to_official
from mask2former_sim.modeling import build_model
from mask2former_sim.modeling.sim.teacher import EMATeacherHook
from mask2former_sim.predictor import Predictor

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "cpu", "tiny-overfit.yaml")


def _cfg(*opts):
    return get_cfg(TINY, ["MODEL.MASK_FORMER.DEC_LAYERS", "3", *opts])


def _model(*opts, seed=0):
    torch.manual_seed(seed)
    return build_model(_cfg(*opts))


def _network(model):
    return {
        k: v for k, v in model.state_dict().items() if k.startswith(("backbone.", "pixel_decoder.", "transformer_"))
    }


# our key → the official name, written from the official code (not from our table)
HEAD_NAMES = {
    "pixel_decoder.input_proj.0.0.weight": "sem_seg_head.pixel_decoder.input_proj.0.0.weight",
    "pixel_decoder.input_proj.2.1.bias": "sem_seg_head.pixel_decoder.input_proj.2.1.bias",
    "pixel_decoder.transformer.level_embed": "sem_seg_head.pixel_decoder.transformer.level_embed",
    "pixel_decoder.transformer.layers.1.self_attn.sampling_offsets.weight": (
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.1.self_attn.sampling_offsets.weight"
    ),
    "pixel_decoder.transformer.layers.0.norm2.bias": (
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.norm2.bias"
    ),
    "pixel_decoder.mask_features.weight": "sem_seg_head.pixel_decoder.mask_features.weight",
    "pixel_decoder.lateral_convs.0.0.weight": "sem_seg_head.pixel_decoder.adapter_1.weight",
    "pixel_decoder.lateral_convs.0.1.bias": "sem_seg_head.pixel_decoder.adapter_1.norm.bias",
    "pixel_decoder.output_convs.0.0.weight": "sem_seg_head.pixel_decoder.layer_1.weight",
    "pixel_decoder.output_convs.0.1.weight": "sem_seg_head.pixel_decoder.layer_1.norm.weight",
    "transformer_decoder.query_feat.weight": "sem_seg_head.predictor.query_feat.weight",
    "transformer_decoder.level_embed.weight": "sem_seg_head.predictor.level_embed.weight",
    "transformer_decoder.transformer_self_attention_layers.1.self_attn.in_proj_weight": (
        "sem_seg_head.predictor.transformer_self_attention_layers.1.self_attn.in_proj_weight"
    ),
    "transformer_decoder.transformer_cross_attention_layers.0.multihead_attn.out_proj.bias": (
        "sem_seg_head.predictor.transformer_cross_attention_layers.0.multihead_attn.out_proj.bias"
    ),
    "transformer_decoder.transformer_ffn_layers.0.linear1.weight": (
        "sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight"
    ),
    "transformer_decoder.decoder_norm.bias": "sem_seg_head.predictor.decoder_norm.bias",
    "transformer_decoder.class_embed.weight": "sem_seg_head.predictor.class_embed.weight",
    "transformer_decoder.mask_embed.layers.2.bias": "sem_seg_head.predictor.mask_embed.layers.2.bias",
}
RESNET_NAMES = {
    "backbone.model.conv1.weight": "backbone.stem.conv1.weight",
    "backbone.model.bn1.running_var": "backbone.stem.conv1.norm.running_var",
    "backbone.model.layer1.0.conv3.weight": "backbone.res2.0.conv3.weight",
    "backbone.model.layer1.0.bn3.weight": "backbone.res2.0.conv3.norm.weight",
    "backbone.model.layer3.5.conv2.weight": "backbone.res4.5.conv2.weight",
    "backbone.model.layer4.0.downsample.0.weight": "backbone.res5.0.shortcut.weight",
    "backbone.model.layer4.0.downsample.1.bias": "backbone.res5.0.shortcut.norm.bias",
    "backbone.model.layer4.2.bn1.running_mean": "backbone.res5.2.conv1.norm.running_mean",
}
SWIN_NAMES = {
    "backbone.model.patch_embed.proj.weight": "backbone.patch_embed.proj.weight",
    "backbone.model.layers_0.blocks.1.attn.qkv.weight": "backbone.layers.0.blocks.1.attn.qkv.weight",
    "backbone.model.layers_1.downsample.reduction.weight": "backbone.layers.0.downsample.reduction.weight",
    "backbone.model.layers_3.downsample.norm.bias": "backbone.layers.2.downsample.norm.bias",
    "backbone.model.layers_2.blocks.5.attn.relative_position_bias_table": (
        "backbone.layers.2.blocks.5.attn.relative_position_bias_table"
    ),
    "backbone.output_norms.res2.weight": "backbone.norm0.weight",
    "backbone.output_norms.res5.bias": "backbone.norm3.bias",
}


@pytest.mark.parametrize(
    "opts, backbone_names",
    [
        (["MODEL.BACKBONE.NAME", "resnet50"], RESNET_NAMES),
        (["MODEL.BACKBONE.NAME", "D2SwinTransformer"], SWIN_NAMES),
        (
            ["MODEL.BACKBONE.NAME", "tf_efficientnet_lite0"],
            {"backbone.model.conv_stem.weight": "backbone.conv_stem.weight"},
        ),
    ],
    ids=["resnet50", "swin_tiny", "efficientnet_lite0"],
)
def test_official_names_match_the_official_code(opts, backbone_names):
    model = _model(*opts)
    network = _network(model)
    official = to_official(model.state_dict(), model)
    names = {**HEAD_NAMES, **backbone_names}
    for ours, expected in names.items():
        assert ours in network, ours
        assert expected in official and official[expected].data_ptr() == network[ours].data_ptr(), (ours, expected)
    assert not any(k.startswith("backbone.layers.3.downsample") for k in official)  # Swin: no merge after stage 4
    assert not any("relative_position_index" in k or "num_batches_tracked" in k for k in official)
    # one official name per network tensor, and back to ours exactly (with a config instead of a model too)
    carried = {k: v for k, v in network.items() if not k.endswith(("relative_position_index", "num_batches_tracked"))}
    assert len(official) == len(carried)
    back = from_official(official, model)
    assert back.keys() == carried.keys() and all(back[k].data_ptr() == v.data_ptr() for k, v in carried.items())
    assert to_official(model.state_dict(), _cfg(*opts)).keys() == official.keys()


def test_fpn_levels_reverse_their_index():
    names = OfficialNames("resnet50", num_fpn_levels=2)  # encoder on res4-res5: res3 and res2 are FPN levels
    assert names.official_key("pixel_decoder.lateral_convs.0.0.weight") == "sem_seg_head.pixel_decoder.adapter_2.weight"
    assert names.official_key("pixel_decoder.output_convs.1.1.bias") == "sem_seg_head.pixel_decoder.layer_1.norm.bias"
    assert names.our_key("sem_seg_head.pixel_decoder.adapter_1.norm.weight") == "pixel_decoder.lateral_convs.1.1.weight"
    with pytest.raises(ValueError, match="adapter_3"):
        names.our_key("sem_seg_head.pixel_decoder.adapter_3.weight")


def _write_pkl(path, state):
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test"}, f)


def test_detectron2_pkl_and_pth_load_every_weight(tmp_path):
    source = _model("MODEL.BACKBONE.NAME", "resnet50")
    official = to_official(source.state_dict(), source)
    official["criterion.empty_weight"] = torch.ones(4)  # in every official checkpoint, not part of the network
    _write_pkl(tmp_path / "model_final.pkl", official)
    torch.save({"model": official}, tmp_path / "model_final.pth")
    for name in ("model_final.pkl", "model_final.pth"):
        target = _model("MODEL.BACKBONE.NAME", "resnet50", seed=1)
        missing, unexpected, skipped = load_model_weights(target, str(tmp_path / name), strict=True)
        assert (missing, unexpected, skipped) == ([], [], [])
        for key, value in _network(source).items():
            if not key.endswith("num_batches_tracked"):
                assert torch.equal(target.state_dict()[key], value), (name, key)


def test_a_pkl_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": os.getcwd}}, f)  # a global other than numpy's
    with pytest.raises(CheckpointError, match="evil.pkl.*posix.getcwd is not allowed"):
        load_model_weights(_model(), str(path))


def test_a_class_head_of_another_size_is_skipped_and_nothing_else(tmp_path, caplog):
    coco = _model("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "80")
    path = tmp_path / "coco.pth"
    torch.save({"model": to_official(coco.state_dict(), coco)}, path)
    cats = _model("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "1", seed=1)
    head_before = cats.transformer_decoder.class_embed.weight.clone()
    with caplog.at_level("INFO"):
        missing, unexpected, skipped = load_model_weights(cats, str(path), strict=True)
    assert skipped == ["transformer_decoder.class_embed.weight", "transformer_decoder.class_embed.bias"]
    assert missing == [] and unexpected == []
    assert "81 classes in the file, 2 in the model" in caplog.text
    assert torch.equal(cats.transformer_decoder.class_embed.weight, head_before)
    assert torch.equal(
        cats.transformer_decoder.mask_embed.layers[0].weight, coco.transformer_decoder.mask_embed.layers[0].weight
    )


def test_another_shape_fails_and_names_the_key(tmp_path):
    source = _model("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "20")
    path = tmp_path / "q20.pth"
    torch.save({"model": to_official(source.state_dict(), source)}, path)
    with pytest.raises(CheckpointError, match=r"q20.pth: 'transformer_decoder.query_feat.weight' has shape \(20, 64\)"):
        load_model_weights(_model(), str(path))


def test_partial_weights_fail_for_inference_and_start_a_training(tmp_path):
    source = _model()  # 2 masked-attention layers
    path = tmp_path / "two_layers.pth"
    torch.save({"model": source.state_dict()}, path)
    deeper = _model("MODEL.MASK_FORMER.DEC_LAYERS", "4", seed=1)
    missing, _, _ = load_model_weights(deeper, str(path))  # training may start from part of the weights
    assert missing and all("_layers.2." in k for k in missing)
    expected = rf"two_layers.pth leaves {len(missing)} weights of the network unloaded: transformer_decoder\."
    with pytest.raises(CheckpointError, match=expected):
        load_model_weights(deeper, str(path), strict=True)
    cfg = _cfg("MODEL.MASK_FORMER.DEC_LAYERS", "4", "MODEL.WEIGHTS", str(path))
    with pytest.raises(CheckpointError, match="leaves"):
        Predictor(cfg)


def test_sim_teacher_is_built_from_the_loaded_student(tmp_path):
    source = _model()
    path = tmp_path / "official.pth"
    torch.save({"model": to_official(source.state_dict(), source)}, path)
    sim = _model("MODEL.MASK_FORMER.SUPERVISION", "sim", seed=1)
    missing, unexpected, _ = load_model_weights(sim, str(path), strict=True)  # the teacher is training state
    assert missing == [] and unexpected == []
    teacher = sim.supervision.sim.teacher
    assert not bool(teacher.initialized)
    EMATeacherHook(teacher, sim).before_train()
    for key, value in _network(source).items():
        assert torch.equal(teacher.state_dict()[key], value), key
