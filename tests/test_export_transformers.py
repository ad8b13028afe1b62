"""tools/export_transformers.py: the folder loads offline into transformers' ``Mask2FormerForUniversalSegmentation``
and ``Mask2FormerImageProcessor``, and the two give our instances on photos of feral_cats_val (random images when
the shared data is absent): mask IoU >= 0.99, scores within 1e-3. The checkpoint is a random-init SIM model's (its
teacher is left out of the export). Mask2Former's post-processing is applied to transformers' outputs
(:func:`post_process_instances`): transformers' own resizes the masks to 384x384 first
(tests/test_transformers_equivalence.py compares the two where they meet)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.optimize import linear_sum_assignment

from mask2former_sim.config import get_cfg
from mask2former_sim.data import catalog, get_dataset_dicts
from mask2former_sim.data.coco import read_image
from mask2former_sim.interop.transformers import image_processor_kwargs, post_process_instances
from mask2former_sim.modeling import build_model
from mask2former_sim.predictor import Predictor

transformers = pytest.importorskip("transformers")
import huggingface_hub.constants  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor  # noqa: E402

from tools import export_transformers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "cpu", "sim_m2f_cats_lite0.yaml")
CATS = os.path.join(catalog.shared_data_root(), "feral-cats")
PHOTOS = 4
MIN_MASK_IOU = 0.99  # smallest mask IoU of matched instances
MAX_SCORE_DIFF = 1e-3  # largest score difference (the two resizes of the photo differ by a grey level here and there)
# resized by the test size (256 on both edges) by whole factors to multiples of 32, which transformers' processor
# does not stretch and where its antialiased resize and ours (PIL) agree closely
SYNTHETIC_SIZES = ((512, 512), (1024, 768), (768, 1024), (512, 384))
SYNTHETIC_GRID = 8  # the synthetic images are random 8x8 colour grids upsampled: smooth, as photos are
QUERIES = 20
SMALL = [
    "MODEL.BACKBONE.PRETRAINED_OFFLINE", "",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", str(QUERIES),
    "TEST.DETECTIONS_PER_IMAGE", str(QUERIES),
]  # fmt: skip


def photos():
    """Four RGB uint8 photos of feral_cats_val, or random images of :data:`SYNTHETIC_SIZES`."""
    if os.path.isdir(CATS):
        return [read_image(d["file_name"]) for d in get_dataset_dicts("feral_cats_val")[:PHOTOS]]
    rng = np.random.default_rng(0)
    grids = [rng.integers(0, 256, (SYNTHETIC_GRID, SYNTHETIC_GRID, 3), dtype=np.uint8) for _ in SYNTHETIC_SIZES]
    return [np.array(Image.fromarray(g).resize((w, h), Image.BILINEAR)) for g, (h, w) in zip(grids, SYNTHETIC_SIZES)]


def match_instances(ours, theirs):
    """Mask IoUs and score differences of our and their instances paired by class, score and mask (Hungarian)."""
    a, b = ours["pred_masks"].flatten(1).float(), theirs["pred_masks"].flatten(1).float()
    intersection = a @ b.T
    iou = intersection / (a.sum(1)[:, None] + b.sum(1)[None] - intersection).clamp(min=1)
    score_diff = (ours["scores"][:, None] - theirs["scores"][None]).abs()
    other_class = ours["pred_classes"][:, None] != theirs["pred_classes"][None]
    rows, cols = linear_sum_assignment((score_diff / MAX_SCORE_DIFF + (1 - iou) + 1e6 * other_class).numpy())
    assert not other_class[rows, cols].any(), "no pairing of the instances keeps every class"
    return iou[rows, cols], score_diff[rows, cols]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(cfg with MODEL.WEIGHTS, the exported folder)."""
    folder = tmp_path_factory.mktemp("export")
    weights = folder / "model.pth"
    torch.manual_seed(0)
    model = build_model(get_cfg(CONFIG, SMALL))
    assert any(k.startswith("supervision.") for k in model.state_dict())  # SIM's teacher and training state
    torch.save({"model": model.state_dict()}, weights)
    output = folder / "transformers"
    with pytest.MonkeyPatch.context() as env:
        env.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # any Hub request raises
        export_transformers.main(
            ["--config-file", CONFIG, "--output", str(output), *SMALL, "MODEL.WEIGHTS", str(weights)]
        )
    return get_cfg(CONFIG, [*SMALL, "MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu"]), str(output)


def test_the_folder_loads_offline_with_every_weight(exported, monkeypatch):
    cfg, output = exported
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert sorted(os.listdir(output)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    model, info = Mask2FormerForUniversalSegmentation.from_pretrained(output, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with safe_open(os.path.join(output, "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("teacher" in k or k.startswith("supervision.") for k in keys)
    with open(os.path.join(output, "config.json")) as f:
        config = json.load(f)
    expected = ["cat"] if os.path.isdir(CATS) else ["class_0"]
    assert [config["id2label"][str(i)] for i in range(len(config["id2label"]))] == expected
    assert config["backbone_config"]["backbone"] == "tf_efficientnet_lite0"
    processor = Mask2FormerImageProcessor.from_pretrained(output)
    assert np.allclose(processor.image_mean, np.array(cfg.MODEL.PIXEL_MEAN) / 255)
    assert np.allclose(processor.image_std, np.array(cfg.MODEL.PIXEL_STD) / 255)
    assert (processor.size.shortest_edge, processor.size.longest_edge) == (256, 256)


def test_the_exported_model_gives_our_instances(exported, monkeypatch):
    cfg, output = exported
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = Mask2FormerForUniversalSegmentation.from_pretrained(output).eval()
    processor = Mask2FormerImageProcessor.from_pretrained(output)
    predictor = Predictor(cfg)
    differences = []
    for image in photos():
        ours = predictor(image)
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            outputs = model(pixel_values=inputs["pixel_values"])
        (theirs,) = post_process_instances(outputs, inputs["pixel_mask"], [image.shape[:2]], QUERIES)
        assert len(theirs["scores"]) == len(ours["scores"]) == QUERIES
        iou, score_diff = match_instances(ours, theirs)
        differences.append((float(iou.min()), float(score_diff.max())))
    message = "per image (min mask IoU, max score difference): " + ", ".join(
        f"({a:.4f}, {b:.2e})" for a, b in differences
    )
    assert all(iou >= MIN_MASK_IOU and diff <= MAX_SCORE_DIFF for iou, diff in differences), message


def test_export_needs_weights_and_a_test_size(tmp_path):
    with pytest.raises(ValueError, match="MODEL.WEIGHTS"):
        export_transformers.main(["--config-file", CONFIG, "--output", str(tmp_path), *SMALL])
    with pytest.raises(ValueError, match="TEST_SCALE"):
        image_processor_kwargs(get_cfg(CONFIG, ["INPUT.TEST_SCALE", "0.5"]))


def test_class_names_fall_back_to_class_i():
    cfg = get_cfg(CONFIG, ["DATASETS.TEST", "('no_such_dataset',)", "DATASETS.TRAIN", "('no_such_either',)"])
    assert export_transformers.class_names(cfg) == ["class_0"]
