"""transformers' Mask2Former as the reference: the same network gives the same outputs.

transformers' ``Mask2FormerForUniversalSegmentation`` (5.24) is built with random weights from our config
(:func:`transformers_config`); its weights reach our model through the official Mask2Former names (transformers →
official: :func:`transformers_to_official`, official → ours: :func:`from_official`). Both run on the same
normalised batch: the class and mask logits of every decoder head agree to 1e-4, and so do the instances of
transformers' ``post_process_instance_segmentation`` and of our inference, where their conventions meet:
transformers resizes the mask logits of the whole padded input to 384×384 and scores them there
(image_processing_mask2former.py:680-682), so the two pipelines are the same computation for an unpadded 384×384
input and target; on a padded batch ours with that convention gives theirs, and Mask2Former's convention applied to
transformers' outputs (:func:`post_process_instances`) gives our inference. Backbones: EfficientNet-Lite0 (the CPU
configs) and ResNet-50 (the COCO configs), at small widths. The weights are transformers' initialisation with noise
on the heads (the deformable attention's offsets and weights start at zero: the noise makes them depend on the
query) and random batch-norm statistics in the backbone (the frozen norms folded into our convolutions matter).
"""

import os

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from mask2former_sim.config import get_cfg
from mask2former_sim.engine.checkpoint import load_model_weights
from mask2former_sim.interop.official import from_official, to_official
from mask2former_sim.interop.transformers import (
    TRANSFORMERS_BACKBONE_PREFIX,
    official_to_transformers,
    post_process_instances,
    transformers_config,
    transformers_to_official,
)
from mask2former_sim.modeling import build_model
from mask2former_sim.modeling.postprocessing import instances_at_size, topk_queries

transformers = pytest.importorskip("transformers")
from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGIT_TOLERANCE = 1e-4  # largest absolute difference of class and mask logits, every head
SCORE_TOLERANCE = 1e-4  # largest score difference of matched instances
MIN_MASK_IOU = 0.99  # smallest mask IoU of matched instances
TRANSFORMERS_MASK_SIZE = 384  # transformers' post-processing resizes mask logits to 384x384 first
HEAD_NOISE = 0.05  # std of the noise added to every head weight
BN_SCALE_RANGE, BN_SHIFT_STD = (
    (0.5, 1.5),
    0.1,
)  # backbone batch norms: weight and variance uniform, bias and mean normal
QUERIES, CLASSES = 20, 3  # small, and several classes: top-k runs over queries x classes
PADDED_SIZES = ((96, 160), (128, 96))  # non-square, of different sizes: the batch is padded to 128x160
SMALL = [
    "MODEL.DEVICE", "cpu",
    "MODEL.BACKBONE.PRETRAINED_OFFLINE", "",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(CLASSES),
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", str(QUERIES),
    "TEST.DETECTIONS_PER_IMAGE", str(QUERIES),  # transformers keeps num_queries (query, class) pairs
]  # fmt: skip
SMALL_RESNET = SMALL + [
    "SOLVER.AMP.ENABLED", "False",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "64",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "64",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", "4",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD", "128",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "64",
    "MODEL.MASK_FORMER.NHEADS", "4",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "128",
    "MODEL.MASK_FORMER.DEC_LAYERS", "4",
    "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ", "True",  # the decoder's input projections carried too
]  # fmt: skip
CONFIGS = {
    "efficientnet_lite0": ("configs/cpu/m2f_cats_lite0.yaml", SMALL),
    "resnet50": ("configs/coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml", SMALL_RESNET),
}


def randomise_(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Noise on every head weight; every backbone batch norm a random affine map (timm's ResNets start their
    residual branches' last norm at 0, which would leave those branches out of the comparison)."""

    def uniform(tensor, low, high):
        tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=generator))

    with torch.no_grad():
        for module in model.model.pixel_level_module.encoder.modules():
            if hasattr(module, "running_var"):
                uniform(module.weight, *BN_SCALE_RANGE)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * BN_SHIFT_STD)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * BN_SHIFT_STD)
                uniform(module.running_var, *BN_SCALE_RANGE)
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not name.startswith((TRANSFORMERS_BACKBONE_PREFIX, "criterion.")):
                tensor.add_(torch.randn(tensor.shape, generator=generator) * HEAD_NOISE)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    """(cfg, transformers' model, its config, our model holding its weights, the official state dict)."""
    transformers.logging.set_verbosity_error()
    config_file, opts = CONFIGS[request.param]
    cfg = get_cfg(os.path.join(ROOT, config_file), opts)
    torch.manual_seed(0)
    hf_config = transformers_config(cfg)
    theirs = Mask2FormerForUniversalSegmentation(hf_config).eval()
    randomise_(theirs, torch.Generator().manual_seed(1))
    official = transformers_to_official(theirs.state_dict(), hf_config)
    ours = build_model(cfg, training=False).eval()
    ours.load_state_dict(from_official(official, cfg), strict=True)
    return cfg, theirs, hf_config, ours, official


def random_images(sizes, seed=2):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8) for h, w in sizes]


def heads(outputs, theirs):
    """Per head (ours, theirs) class logits and mask logits, the first head first."""
    ours = outputs["aux_outputs"] + [outputs]
    their = theirs.auxiliary_logits + [
        {"class_queries_logits": theirs.class_queries_logits, "masks_queries_logits": theirs.masks_queries_logits}
    ]
    return [
        ((o["pred_logits"], t["class_queries_logits"]), (o["pred_masks"], t["masks_queries_logits"]))
        for o, t in zip(ours, their)
    ]


def report(differences):
    return "largest absolute differences:\n" + "\n".join(f"  {k}: {v:.3g}" for k, v in differences.items())


def match_instances(ours, theirs):
    """Pairs (i, j) of our and their instances: same class, closest score, then largest mask IoU (Hungarian);
    returns the pairs' mask IoUs and score differences."""
    a, b = ours["pred_masks"].flatten(1).float(), theirs["pred_masks"].flatten(1).float()
    intersection = a @ b.T
    iou = intersection / (a.sum(1)[:, None] + b.sum(1)[None] - intersection).clamp(min=1)
    score_diff = (ours["scores"][:, None] - theirs["scores"][None]).abs()
    other_class = ours["pred_classes"][:, None] != theirs["pred_classes"][None]
    rows, cols = linear_sum_assignment((score_diff / SCORE_TOLERANCE + (1 - iou) + 1e6 * other_class).numpy())
    assert not other_class[rows, cols].any(), "no pairing of the instances keeps every class"
    return iou[rows, cols], score_diff[rows, cols]


def nonempty(instances):
    keep = instances["pred_masks"].flatten(1).any(1)
    return {k: v[keep] for k, v in instances.items()}


def their_instances(result):
    """transformers' ``post_process_instance_segmentation`` result of one image as our instances dict."""
    segments = result["segments_info"]
    masks = result["segmentation"]
    return {
        "pred_masks": masks.bool() if segments else masks.new_zeros((0, *masks.shape), dtype=torch.bool),
        "scores": torch.tensor([s["score"] for s in segments], dtype=torch.float32),
        "pred_classes": torch.tensor([s["label_id"] for s in segments], dtype=torch.int64),
    }


def assert_same_instances(ours, theirs, what):
    assert len(ours["scores"]) == len(theirs["scores"]) > 0, f"{what}: {len(ours['scores'])} vs {len(theirs['scores'])}"
    iou, score_diff = match_instances(ours, theirs)
    differences = {f"{what} score": float(score_diff.max()), f"{what} 1 - mask IoU": 1 - float(iou.min())}
    assert float(score_diff.max()) <= SCORE_TOLERANCE and float(iou.min()) >= MIN_MASK_IOU, report(differences)


def test_every_head_matches_transformers_on_a_padded_batch(pair):
    cfg, theirs, _, ours, _ = pair
    images, sizes = ours.preprocess_images([{"image": x} for x in random_images(PADDED_SIZES)])
    assert tuple(images.shape[-2:]) == (128, 160) and sizes == list(PADDED_SIZES)
    with torch.no_grad():
        outputs = ours.forward_network(images, all_heads=True)
        reference = theirs(pixel_values=images, output_auxiliary_logits=True)
    per_head = heads(outputs, reference)
    assert len(per_head) == cfg.MODEL.MASK_FORMER.DEC_LAYERS
    differences = {}
    for i, ((class_ours, class_theirs), (mask_ours, mask_theirs)) in enumerate(per_head):
        assert class_ours.shape == class_theirs.shape and mask_ours.shape == mask_theirs.shape
        differences[f"head {i} class logits"] = float((class_ours - class_theirs).abs().max())
        differences[f"head {i} mask logits"] = float((mask_ours - mask_theirs).abs().max())
    assert max(differences.values()) <= LOGIT_TOLERANCE, report(differences)


def test_instances_match_transformers_post_processing_at_its_384_size(pair):
    cfg, theirs, _, ours, _ = pair
    size = (TRANSFORMERS_MASK_SIZE, TRANSFORMERS_MASK_SIZE)
    inputs = [{"image": x} for x in random_images([size, size], seed=3)]
    images, _ = ours.preprocess_images(inputs)
    with torch.no_grad():
        results = ours.inference(inputs)
        reference = theirs(pixel_values=images)
    processed = Mask2FormerImageProcessor().post_process_instance_segmentation(
        reference, threshold=0.0, target_sizes=[size, size], return_binary_maps=True
    )
    for i, (result, their_result) in enumerate(zip(results, processed)):
        assert_same_instances(nonempty(result["instances"]), their_instances(their_result), f"image {i}")


def test_padded_instances_match_in_either_convention(pair):
    """A padded batch: transformers' post-processing is ours on the whole padded input at 384x384, and
    :func:`post_process_instances` on transformers' outputs is our inference."""
    cfg, theirs, _, ours, _ = pair
    inputs = [{"image": x} for x in random_images(PADDED_SIZES, seed=4)]
    images, sizes = ours.preprocess_images(inputs)
    pixel_mask = torch.zeros(len(sizes), *images.shape[-2:], dtype=torch.int64)
    for mask, (h, w) in zip(pixel_mask, sizes):
        mask[:h, :w] = 1
    with torch.no_grad():
        results = ours.inference(inputs)
        outputs = ours.forward_network(images, all_heads=False)
        reference = theirs(pixel_values=images)
    processed = Mask2FormerImageProcessor().post_process_instance_segmentation(
        reference, threshold=0.0, return_binary_maps=True
    )
    converted = post_process_instances(reference, pixel_mask, topk=cfg.TEST.DETECTIONS_PER_IMAGE)
    canvas = (TRANSFORMERS_MASK_SIZE, TRANSFORMERS_MASK_SIZE)
    for i in range(len(inputs)):
        scores, labels, query_idx = topk_queries(outputs["pred_logits"][i], QUERIES)
        at_384 = instances_at_size(outputs["pred_masks"][i][query_idx], scores, labels, canvas, canvas, canvas)
        assert_same_instances(nonempty(at_384), their_instances(processed[i]), f"image {i}, 384 convention")
        assert_same_instances(
            nonempty(results[i]["instances"]), nonempty(converted[i]), f"image {i}, Mask2Former convention"
        )


def test_official_checkpoint_from_transformers_loads_with_no_missing_or_unexpected_key(pair, tmp_path):
    cfg, theirs, hf_config, ours, official = pair
    back = official_to_transformers(official, hf_config)
    own = theirs.state_dict()
    assert sorted(back) == sorted(own) and all(torch.equal(back[k], own[k]) for k in own)
    path = tmp_path / "official.pth"
    torch.save({"model": official}, path)
    for training in (True, False):  # the training model has training state besides the network
        model = build_model(cfg, training=training)
        missing, unexpected, skipped = load_model_weights(model, str(path), strict=True)
        assert (missing, unexpected, skipped) == ([], [], [])
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize(
    "opts, key",
    [
        (["MODEL.BACKBONE.NAME", "swin_tiny_patch4_window7_224"], "MODEL.BACKBONE.NAME"),
        (["MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", "2"], "ENCODER_N_HEADS"),
        (["MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS", "2"], "ENCODER_N_POINTS"),
    ],
)
def test_transformers_config_names_what_transformers_cannot_hold(opts, key):
    cfg = get_cfg(os.path.join(ROOT, CONFIGS["efficientnet_lite0"][0]), SMALL + opts)
    with pytest.raises(ValueError, match=key):
        transformers_config(cfg)


def test_transformers_config_carries_the_network_settings():
    cfg = get_cfg(os.path.join(ROOT, CONFIGS["resnet50"][0]), CONFIGS["resnet50"][1])
    config = transformers_config(cfg, {0: "a", 1: "b", 2: "c"})
    assert config.backbone_config.backbone == "resnet50" and config.backbone_config.out_indices == [1, 2, 3, 4]
    assert config.backbone_config.freeze_batch_norm_2d is True
    assert (config.num_queries, config.hidden_dim, config.feature_size, config.decoder_layers) == (QUERIES, 64, 64, 4)
    assert config.enforce_input_projection is True and config.id2label == {0: "a", 1: "b", 2: "c"}
    assert np.isclose(config.no_object_weight, cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT)


def test_our_weights_reach_transformers_with_unfrozen_batch_norms():
    """Ours → official → transformers, the export's way, for a backbone whose batch norms train (transformers'
    keep a ``num_batches_tracked`` counter that ours, folded or not, do not carry)."""
    transformers.logging.set_verbosity_error()
    cfg = get_cfg(os.path.join(ROOT, "configs", "cpu", "tiny-overfit.yaml"))
    assert not cfg.MODEL.BACKBONE.FREEZE_BN
    torch.manual_seed(0)
    ours = build_model(cfg, training=False).eval()
    hf_config = transformers_config(cfg)
    theirs = Mask2FormerForUniversalSegmentation(hf_config).eval()
    theirs.load_state_dict(official_to_transformers(to_official(ours.state_dict(), ours), hf_config), strict=True)
    images, _ = ours.preprocess_images([{"image": x} for x in random_images(PADDED_SIZES)])
    with torch.no_grad():
        outputs = ours.forward_network(images, all_heads=False)
        reference = theirs(pixel_values=images)
    differences = {
        "class logits": float((outputs["pred_logits"] - reference.class_queries_logits).abs().max()),
        "mask logits": float((outputs["pred_masks"] - reference.masks_queries_logits).abs().max()),
    }
    assert max(differences.values()) <= LOGIT_TOLERANCE, report(differences)
