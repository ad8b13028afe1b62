"""Hugging Face transformers' Mask2Former (``Mask2FormerForUniversalSegmentation``, transformers 5.24) and ours.

transformers holds the same network as Mask2Former under other names. Weights travel through the official names
(:mod:`.official`): ours ↔ official ↔ transformers. This module gives the config (:func:`transformers_config`), the
weights both ways (:func:`transformers_to_official`, :func:`official_to_transformers`), the image processor's
settings (:func:`image_processor_kwargs`) and Mask2Former's instance inference on transformers' outputs
(:func:`post_process_instances`).

Name rules, official ↔ transformers (:data:`NAME_RULES`; ``{n}``, ``{i}``, ``{k}`` are indices, kept):

- pixel decoder, ``sem_seg_head.pixel_decoder.`` ↔ ``model.pixel_level_module.decoder.``: ``input_proj`` ↔
  ``input_projections``; ``transformer.level_embed`` ↔ ``level_embed``; ``transformer.encoder.layers.{n}.`` ↔
  ``encoder.layers.{n}.`` with ``norm1``/``linear1``/``linear2``/``norm2`` ↔
  ``self_attn_layer_norm``/``fc1``/``fc2``/``final_layer_norm``; ``mask_features`` ↔ ``mask_projection``;
  ``adapter_{k}.weight``/``adapter_{k}.norm`` ↔ ``adapter_{k}.0.weight``/``adapter_{k}.1`` (``layer_{k}`` alike);
- transformer decoder, ``sem_seg_head.predictor.`` ↔ ``model.transformer_module.``: the layers'
  ``transformer_self_attention_layers.{n}.norm``/``transformer_cross_attention_layers.{n}.multihead_attn``/
  ``transformer_cross_attention_layers.{n}.norm``/``transformer_ffn_layers.{n}.linear1``/``linear2``/``norm`` ↔
  ``decoder.layers.{n}.self_attn_layer_norm``/``cross_attn``/``cross_attn_layer_norm``/``fc1``/``fc2``/
  ``final_layer_norm``; ``decoder_norm`` ↔ ``decoder.layernorm``; ``mask_embed.layers.{i}`` ↔
  ``decoder.mask_predictor.mask_embedder.{i}.0``; ``query_feat``/``query_embed`` ↔
  ``queries_features``/``queries_embedder``; ``input_proj`` ↔ ``input_projections``; ``level_embed`` alike;
  ``class_embed`` ↔ ``class_predictor`` (at the top of transformers' model, not under ``model.``).

Three rules are more than renames:

- the decoder's self-attention: torch's ``MultiheadAttention`` in the official model keeps query, key and value in
  one ``self_attn.in_proj_weight`` (3d, d) / ``in_proj_bias`` (3d,); transformers has three ``Linear`` layers
  ``self_attn.q_proj``, ``k_proj``, ``v_proj``: the thirds, in that order (the cross-attention is a
  ``MultiheadAttention`` on both sides);
- the backbone: transformers' ``TimmBackbone`` holds the timm model under
  ``model.pixel_level_module.encoder._backbone.``, our ``TimmBackbone`` under ``backbone.model.``; its official
  names are those of :class:`.official.OfficialNames` (detectron2's for ``resnet*``, ``backbone.<timm name>``
  otherwise). A batch norm that transformers does not freeze has a ``num_batches_tracked`` counter; it is dropped
  on the way out and added (0) on the way in;
- transformers' loss buffer ``criterion.empty_weight`` (the classes' cross-entropy weights, 1 and
  ``no_object_weight`` last) is dropped on the way out and taken from the official checkpoint, or rebuilt from the
  config, on the way in.

Only timm backbones without extra layers have a place in transformers' ``TimmBackbone``: ResNets, EfficientNets,
...; a Swin backbone (with Mask2Former's per-output LayerNorms) does not (:func:`check_transformers_compatible`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..modeling.backbone.timm_backbone import FEATURE_STRIDES, is_swin, resolve_backbone_name
from ..modeling.postprocessing import instances_at_size, topk_queries
from ..utils.weights_files import short_list
from .official import OfficialNames

__all__ = [
    "NAME_RULES",
    "TRANSFORMERS_BACKBONE_PREFIX",
    "check_transformers_compatible",
    "image_processor_kwargs",
    "official_to_transformers",
    "post_process_instances",
    "transformers_config",
    "transformers_to_official",
]

TRANSFORMERS_BACKBONE_PREFIX = "model.pixel_level_module.encoder._backbone."  # transformers' timm model
OUR_TIMM_PREFIX = "backbone.model."  # our timm model
TRANSFORMERS_EMPTY_WEIGHT = "criterion.empty_weight"  # the loss's class weights, a buffer of transformers' model
OFFICIAL_EMPTY_WEIGHT = "criterion.empty_weight"  # the same buffer in official checkpoints
BATCH_NORM_COUNTER = "num_batches_tracked"
# transformers' pixel decoder: 4 sampling points per head and level on the last 3 backbone features, GroupNorm
# (modeling_mask2former.py:1029-1031, 1342, 1269)
TRANSFORMERS_ENCODER_POINTS = 4
TRANSFORMERS_ENCODER_FEATURES = ["res3", "res4", "res5"]
TRANSFORMERS_NORM = "GN"
PIXEL_SCALE = 255.0  # our PIXEL_MEAN/PIXEL_STD are in 0-255 units; transformers' in 0-1 after rescale_factor 1/255
DETECTIONS_PER_IMAGE = 100  # top-k instances per image (Mask2Former's TEST.DETECTIONS_PER_IMAGE)

_OD, _OP = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
_TD, _TP = "model.pixel_level_module.decoder.", "model.transformer_module."

# (official, transformers) templates, the first match wins; a template ending in "." is a prefix (the rest of the
# key follows unchanged), any other names one whole key
NAME_RULES: Tuple[Tuple[str, str], ...] = (
    (_OD + "input_proj.{i}.", _TD + "input_projections.{i}."),
    (_OD + "transformer.level_embed", _TD + "level_embed"),
    (_OD + "transformer.encoder.layers.{n}.self_attn.", _TD + "encoder.layers.{n}.self_attn."),
    (_OD + "transformer.encoder.layers.{n}.norm1.", _TD + "encoder.layers.{n}.self_attn_layer_norm."),
    (_OD + "transformer.encoder.layers.{n}.linear1.", _TD + "encoder.layers.{n}.fc1."),
    (_OD + "transformer.encoder.layers.{n}.linear2.", _TD + "encoder.layers.{n}.fc2."),
    (_OD + "transformer.encoder.layers.{n}.norm2.", _TD + "encoder.layers.{n}.final_layer_norm."),
    (_OD + "mask_features.", _TD + "mask_projection."),
    (_OD + "adapter_{k}.weight", _TD + "adapter_{k}.0.weight"),
    (_OD + "adapter_{k}.norm.", _TD + "adapter_{k}.1."),
    (_OD + "layer_{k}.weight", _TD + "layer_{k}.0.weight"),
    (_OD + "layer_{k}.norm.", _TD + "layer_{k}.1."),
    (_OP + "transformer_self_attention_layers.{n}.self_attn.out_proj.", _TP + "decoder.layers.{n}.self_attn.out_proj."),
    (_OP + "transformer_self_attention_layers.{n}.norm.", _TP + "decoder.layers.{n}.self_attn_layer_norm."),
    (_OP + "transformer_cross_attention_layers.{n}.multihead_attn.", _TP + "decoder.layers.{n}.cross_attn."),
    (_OP + "transformer_cross_attention_layers.{n}.norm.", _TP + "decoder.layers.{n}.cross_attn_layer_norm."),
    (_OP + "transformer_ffn_layers.{n}.linear1.", _TP + "decoder.layers.{n}.fc1."),
    (_OP + "transformer_ffn_layers.{n}.linear2.", _TP + "decoder.layers.{n}.fc2."),
    (_OP + "transformer_ffn_layers.{n}.norm.", _TP + "decoder.layers.{n}.final_layer_norm."),
    (_OP + "decoder_norm.", _TP + "decoder.layernorm."),
    (_OP + "mask_embed.layers.{i}.", _TP + "decoder.mask_predictor.mask_embedder.{i}.0."),
    (_OP + "query_feat.", _TP + "queries_features."),
    (_OP + "query_embed.", _TP + "queries_embedder."),
    (_OP + "level_embed.", _TP + "level_embed."),
    (_OP + "input_proj.{i}.", _TP + "input_projections.{i}."),
    (_OP + "class_embed.", "class_predictor."),
)
# the decoder's self-attention projections: one stacked (q; k; v) tensor ↔ three
_OFFICIAL_QKV = re.compile(
    r"^sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$"
)
_TRANSFORMERS_QKV = re.compile(
    r"^model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$"
)
_QKV = ("q", "k", "v")


def _template_regex(template: str) -> "re.Pattern[str]":
    """``a.{n}.b.`` → ``^a\\.(?P<n>\\d+)\\.b\\.`` (a prefix) or, without the final dot, the whole key."""
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(re.escape(p) if i % 2 == 0 else rf"(?P<{p}>\d+)" for i, p in enumerate(parts))
    return re.compile("^" + pattern + ("" if template.endswith(".") else "$"))


_OFFICIAL_RULES = [(_template_regex(o), t) for o, t in NAME_RULES]
_TRANSFORMERS_RULES = [(_template_regex(t), o) for o, t in NAME_RULES]


def _rename(key: str, rules) -> Optional[str]:
    for pattern, target in rules:
        match = pattern.match(key)
        if match:
            return target.format(**match.groupdict()) + key[match.end() :]
    return None


def _unknown_keys_error(unknown: List[str], what: str) -> KeyError:
    return KeyError(f"{len(unknown)} keys are not {what}: {short_list(unknown, 5)}")


# ---------------------------------------------------------------------------------------------------------- config
def check_transformers_compatible(cfg: Any) -> None:
    """The network of ``cfg`` must be one that transformers' Mask2Former can hold.

    Raises:
        ValueError: names each key whose value transformers cannot express, and why.
    """
    head, mf = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.MASK_FORMER
    errors = []
    if is_swin(cfg.MODEL.BACKBONE.NAME):
        errors.append(
            f"MODEL.BACKBONE.NAME = {cfg.MODEL.BACKBONE.NAME!r}: Mask2Former's Swin normalises each output with its "
            "own LayerNorm, which transformers' TimmBackbone has no place for"
        )
    if head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS != mf.NHEADS:
        errors.append(
            f"MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = {head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS}"
            f" differs from MODEL.MASK_FORMER.NHEADS = {mf.NHEADS}: transformers uses one num_attention_heads for both"
        )
    if head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS != TRANSFORMERS_ENCODER_POINTS:
        errors.append(
            "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = "
            f"{head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS}: transformers' encoder has {TRANSFORMERS_ENCODER_POINTS}"
        )
    if list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES) != TRANSFORMERS_ENCODER_FEATURES:
        errors.append(
            "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = "
            f"{list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES)}: transformers' encoder reads "
            f"{TRANSFORMERS_ENCODER_FEATURES}"
        )
    if list(head.IN_FEATURES) != list(FEATURE_STRIDES) or list(cfg.MODEL.BACKBONE.OUT_FEATURES) != list(
        FEATURE_STRIDES
    ):
        errors.append(
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES = {list(head.IN_FEATURES)}, MODEL.BACKBONE.OUT_FEATURES = "
            f"{list(cfg.MODEL.BACKBONE.OUT_FEATURES)}: transformers' pixel decoder reads {list(FEATURE_STRIDES)}"
        )
    if head.NORM != TRANSFORMERS_NORM:
        errors.append(f"MODEL.SEM_SEG_HEAD.NORM = {head.NORM!r}: transformers' pixel decoder has GroupNorm ('GN')")
    if errors:
        raise ValueError("transformers' Mask2Former cannot hold this network:\n" + "\n".join(errors))


def _timm_feature_indices(model_name: str) -> List[int]:
    """The timm ``features_only`` indices our backbone returns as res2..res5 (the last feature at each stride),
    read from the model built on the meta device (no weights)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, features_only=True)
    reductions = list(model.feature_info.reduction())
    indices = []
    for name, stride in FEATURE_STRIDES.items():
        matches = [i for i, r in enumerate(reductions) if r == stride]
        if not matches:
            raise ValueError(
                f"timm model {model_name!r} has feature strides {reductions}; {name} needs stride {stride}"
            )
        indices.append(matches[-1])
    return indices


def transformers_config(cfg: Any, id2label: Optional[Mapping[int, str]] = None):
    """transformers' ``Mask2FormerConfig`` of the network of ``cfg``: its timm backbone (our res2..res5, batch norms
    frozen as ``MODEL.BACKBONE.FREEZE_BN``, no pretrained weights), widths, layers, heads, queries, and the loss
    settings (points, weights). ``id2label`` names the classes (default: transformers' ``LABEL_i``).

    Raises:
        ValueError: see :func:`check_transformers_compatible`; ``id2label`` not of ``NUM_CLASSES`` entries.
    """
    from transformers import Mask2FormerConfig, TimmBackboneConfig

    check_transformers_compatible(cfg)
    mf, head = cfg.MODEL.MASK_FORMER, cfg.MODEL.SEM_SEG_HEAD
    backbone_name = resolve_backbone_name(cfg)
    backbone = TimmBackboneConfig(
        backbone=backbone_name,
        out_indices=_timm_feature_indices(backbone_name),
        freeze_batch_norm_2d=bool(cfg.MODEL.BACKBONE.FREEZE_BN),
    )
    labels: Dict[str, Any] = {"num_labels": head.NUM_CLASSES}
    if id2label is not None:
        if len(id2label) != head.NUM_CLASSES:
            raise ValueError(
                f"id2label has {len(id2label)} classes, MODEL.SEM_SEG_HEAD.NUM_CLASSES is {head.NUM_CLASSES}"
            )
        id2label = {int(k): str(v) for k, v in id2label.items()}
        labels = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    return Mask2FormerConfig(
        backbone_config=backbone,
        num_queries=mf.NUM_OBJECT_QUERIES,
        hidden_dim=mf.HIDDEN_DIM,
        feature_size=head.CONVS_DIM,
        mask_feature_size=head.MASK_DIM,
        encoder_layers=head.TRANSFORMER_ENC_LAYERS,
        num_attention_heads=mf.NHEADS,
        encoder_feedforward_dim=head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
        dim_feedforward=mf.DIM_FEEDFORWARD,
        decoder_layers=mf.DEC_LAYERS,
        dropout=mf.DROPOUT,
        pre_norm=mf.PRE_NORM,
        enforce_input_projection=mf.ENFORCE_INPUT_PROJ,
        common_stride=head.COMMON_STRIDE,
        feature_strides=list(FEATURE_STRIDES.values()),
        use_auxiliary_loss=mf.DEEP_SUPERVISION,
        train_num_points=mf.TRAIN_NUM_POINTS,
        oversample_ratio=mf.OVERSAMPLE_RATIO,
        importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        class_weight=mf.CLASS_WEIGHT,
        mask_weight=mf.MASK_WEIGHT,
        dice_weight=mf.DICE_WEIGHT,
        no_object_weight=mf.NO_OBJECT_WEIGHT,
        **labels,
    )


def image_processor_kwargs(cfg: Any) -> Dict[str, Any]:
    """``Mask2FormerImageProcessor`` arguments for our test-time input: the shortest edge resized to
    ``INPUT.MIN_SIZE_TEST`` with the longest at most ``INPUT.MAX_SIZE_TEST`` (bilinear), the values rescaled by
    1/255 and normalised by ``MODEL.PIXEL_MEAN``/``PIXEL_STD`` (ours are in 0-255 units, so divided by 255), and
    ``MODEL.MASK_FORMER.SIZE_DIVISIBILITY`` as ``size_divisor``.

    transformers' processor rounds the resized size up to a multiple of ``size_divisor`` by resizing to it
    (image_processing_mask2former.py:347-350) where we pad: the two give the same input only when the resized
    image is a multiple already.

    Raises:
        ValueError: ``INPUT.TEST_SCALE`` > 0 (a resize by a factor, which the processor cannot express).
    """
    if cfg.INPUT.TEST_SCALE > 0:
        raise ValueError(
            f"INPUT.TEST_SCALE = {cfg.INPUT.TEST_SCALE}: transformers' image processor resizes to an edge length, "
            "not by a factor; export with INPUT.TEST_SCALE 0 and INPUT.MIN_SIZE_TEST / INPUT.MAX_SIZE_TEST"
        )
    from transformers.image_utils import PILImageResampling

    resize = cfg.INPUT.MIN_SIZE_TEST > 0
    kwargs: Dict[str, Any] = {
        "do_resize": resize,
        "resample": PILImageResampling.BILINEAR,
        "do_rescale": True,
        "rescale_factor": 1.0 / PIXEL_SCALE,
        "do_normalize": True,
        "image_mean": [m / PIXEL_SCALE for m in cfg.MODEL.PIXEL_MEAN],
        "image_std": [s / PIXEL_SCALE for s in cfg.MODEL.PIXEL_STD],
        "size_divisor": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
        "ignore_index": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
    }
    if resize:
        kwargs["size"] = {"shortest_edge": cfg.INPUT.MIN_SIZE_TEST, "longest_edge": cfg.INPUT.MAX_SIZE_TEST}
    return kwargs


# --------------------------------------------------------------------------------------------------------- weights
def _backbone_names(hf_config: Any) -> OfficialNames:
    """The official backbone names of transformers' timm backbone (and its FPN level count)."""
    backbone_config = hf_config.backbone_config
    timm_name = getattr(backbone_config, "backbone", None)
    if backbone_config.model_type != "timm_backbone" or not timm_name:
        raise ValueError(
            f"the backbone of this transformers config is {backbone_config.model_type!r}; only timm backbones "
            "(TimmBackboneConfig) have official and our names here"
        )
    encoder_stride = sorted(hf_config.feature_strides)[-len(TRANSFORMERS_ENCODER_FEATURES)]
    num_fpn_levels = int(math.log2(encoder_stride) - math.log2(hf_config.common_stride))
    return OfficialNames(timm_name, num_fpn_levels)


def transformers_to_official(hf_state_dict: Mapping[str, torch.Tensor], hf_config: Any) -> Dict[str, torch.Tensor]:
    """transformers' ``Mask2FormerForUniversalSegmentation`` state dict → official Mask2Former names.

    Raises:
        ValueError: a backbone other than timm's.
        KeyError: keys the name rules do not know (named), or a decoder self-attention missing q, k or v.
    """
    names = _backbone_names(hf_config)
    out: Dict[str, torch.Tensor] = {}
    qkv: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in hf_state_dict.items():
        if key == TRANSFORMERS_EMPTY_WEIGHT or key.endswith("." + BATCH_NORM_COUNTER):
            continue
        if key.startswith(TRANSFORMERS_BACKBONE_PREFIX):
            out[names.official_key(OUR_TIMM_PREFIX + key[len(TRANSFORMERS_BACKBONE_PREFIX) :])] = value
            continue
        split = _TRANSFORMERS_QKV.match(key)
        if split:
            layer, part, kind = split.groups()
            qkv.setdefault((layer, kind), {})[part] = value
            continue
        official = _rename(key, _TRANSFORMERS_RULES)
        if official is None:
            unknown.append(key)
        else:
            out[official] = value
    if unknown:
        raise _unknown_keys_error(unknown, "transformers Mask2Former keys of the name rules")
    for (layer, kind), parts in sorted(qkv.items()):
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise KeyError(f"decoder layer {layer}: self_attn {kind} lacks {missing}_proj")
        key = f"{_OP}transformer_self_attention_layers.{layer}.self_attn.in_proj_{kind}"
        out[key] = torch.cat([parts[p] for p in _QKV], dim=0)
    return out


def official_to_transformers(
    official_state_dict: Mapping[str, torch.Tensor], hf_config: Any
) -> Dict[str, torch.Tensor]:
    """An official Mask2Former state dict → transformers' ``Mask2FormerForUniversalSegmentation`` names, complete:
    batch-norm counters of an unfrozen backbone (0) and the loss's ``criterion.empty_weight`` (the checkpoint's, or
    1 for every class and ``no_object_weight`` for "no object") are added.

    Raises:
        ValueError: a backbone other than timm's.
        KeyError: keys the name rules do not know (named).
    """
    names = _backbone_names(hf_config)
    count_batches = not getattr(hf_config.backbone_config, "freeze_batch_norm_2d", False)
    out: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in official_state_dict.items():
        if key == OFFICIAL_EMPTY_WEIGHT:
            out[TRANSFORMERS_EMPTY_WEIGHT] = value
            continue
        if key.startswith("backbone."):
            ours = names.our_key(key)
            if not ours.startswith(OUR_TIMM_PREFIX):  # Swin's output norms: no place in transformers' TimmBackbone
                unknown.append(key)
                continue
            hf_key = TRANSFORMERS_BACKBONE_PREFIX + ours[len(OUR_TIMM_PREFIX) :]
            out[hf_key] = value
            if count_batches and hf_key.endswith(".running_var"):
                out[hf_key[: -len("running_var")] + BATCH_NORM_COUNTER] = torch.zeros((), dtype=torch.long)
            continue
        split = _OFFICIAL_QKV.match(key)
        if split:
            layer, kind = split.groups()
            for part, tensor in zip(_QKV, value.chunk(len(_QKV), dim=0)):
                out[f"{_TP}decoder.layers.{layer}.self_attn.{part}_proj.{kind}"] = tensor.clone()
            continue
        hf_key = _rename(key, _OFFICIAL_RULES)
        if hf_key is None:
            unknown.append(key)
        else:
            out[hf_key] = value
    if unknown:
        raise _unknown_keys_error(unknown, "official Mask2Former keys of the name rules")
    if TRANSFORMERS_EMPTY_WEIGHT not in out:
        empty_weight = torch.ones(hf_config.num_labels + 1)
        empty_weight[-1] = hf_config.no_object_weight
        out[TRANSFORMERS_EMPTY_WEIGHT] = empty_weight
    return out


# ------------------------------------------------------------------------------------------------- post-processing
def post_process_instances(
    outputs: Any,
    pixel_mask: torch.Tensor,
    target_sizes: Optional[List[Tuple[int, int]]] = None,
    topk: int = DETECTIONS_PER_IMAGE,
) -> List[Dict[str, torch.Tensor]]:
    """Mask2Former's instance inference (ours, :func:`~mask2former_sim.modeling.postprocessing.instances_at_size`)
    on the outputs of transformers' model: per image the top-k (query, class) pairs by class probability, their
    mask logits upsampled to the padded input, cropped to the image, resized to its target size, binarised at 0,
    scored (class probability × mean foreground probability) and boxed.

    transformers' ``post_process_instance_segmentation`` resizes the mask logits of the whole padded input to
    384×384 first and scores them there (image_processing_mask2former.py:680-682), keeps the top ``num_queries``
    pairs and drops empty masks: its instances are these only for an unpadded 384×384 input and target.

    Args:
        outputs: ``Mask2FormerForUniversalSegmentationOutput`` (``class_queries_logits`` (B, Q, K+1),
            ``masks_queries_logits`` (B, Q, Hp/4, Wp/4)).
        pixel_mask: (B, Hp, Wp) the image processor's mask, 1 on the image, 0 on the padding.
        target_sizes: (height, width) per image; default the image's size in the input.
        topk: instances per image (``TEST.DETECTIONS_PER_IMAGE``).

    Returns:
        Per image ``{"pred_masks": bool (N, H, W), "pred_boxes": (N, 4) XYXY, "scores": (N,), "pred_classes": (N,)}``.
    """
    padded_size = tuple(pixel_mask.shape[-2:])
    results = []
    for i, (class_logits, mask_logits) in enumerate(zip(outputs.class_queries_logits, outputs.masks_queries_logits)):
        valid = pixel_mask[i].bool()
        image_size = (int(valid.any(1).sum()), int(valid.any(0).sum()))
        output_size = tuple(target_sizes[i]) if target_sizes is not None else image_size
        scores, labels, query_idx = topk_queries(class_logits, topk)
        results.append(instances_at_size(mask_logits[query_idx], scores, labels, padded_size, image_size, output_size))
    return results
