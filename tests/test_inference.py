"""Instance inference: output sizes, scores, classes, mask-derived boxes (brute force), sliding-window dispatch."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mask2former_sim.modeling import meta_arch as meta_arch_module
from mask2former_sim.modeling.criterion import ClassificationLoss, SetCriterion
from mask2former_sim.modeling.image_list import pad_images
from mask2former_sim.modeling.losses.mask import MaskCost, MaskTargets, PointSampledMaskLoss
from mask2former_sim.modeling.matcher import HungarianMatcher
from mask2former_sim.modeling.meta_arch import MaskFormer
from mask2former_sim.modeling.postprocessing import (
    instance_inference,
    instances_at_size,
    masks_to_instances,
    topk_queries,
)
from mask2former_sim.modeling.supervision import Supervision
from mask2former_sim.modeling.targets import image_targets

NUM_CLASSES, NUM_QUERIES, DIM = 3, 5, 8


class StubBackbone(nn.Module):
    def forward(self, x):
        return {"res2": F.avg_pool2d(x, 4)}


class StubPixelDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, DIM, 1)

    def forward_features(self, features):
        return torch.sin(3 * self.proj(features["res2"])), None, []


class StubDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(NUM_QUERIES, NUM_CLASSES + 1))
        self.embed = nn.Parameter(torch.randn(NUM_QUERIES, DIM))

    def forward(self, x, mask_features, mask=None, all_heads=True):
        masks = torch.einsum("qc,bchw->bqhw", self.embed, mask_features)
        return {
            "pred_logits": self.logits[None].expand(mask_features.shape[0], -1, -1),
            "pred_masks": masks,
            "aux_outputs": [],
        }


def stub_model(topk=7, sliding_window=None):
    torch.manual_seed(0)
    families = [
        ("labels", ClassificationLoss(num_classes=NUM_CLASSES, eos_coef=0.1)),
        ("masks", PointSampledMaskLoss(num_points=16, oversample_ratio=3.0, importance_sample_ratio=0.75)),
    ]
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    supervision = Supervision(
        mode="mask",
        matching_cost=MaskCost(num_points=16),
        families=families,
        base_weights=weights,
        parts={"mask_targets": MaskTargets()},
    )
    criterion = SetCriterion(
        matcher=HungarianMatcher(cost=supervision.matching_cost), families=families, weight_dict=weights
    )
    return MaskFormer(
        backbone=StubBackbone(),
        pixel_decoder=StubPixelDecoder(),
        transformer_decoder=StubDecoder(),
        supervision=supervision,
        criterion=criterion,
        num_classes=NUM_CLASSES,
        size_divisibility=32,
        pixel_mean=[120.0] * 3,
        pixel_std=[60.0] * 3,
        test_topk=topk,
        sliding_window=sliding_window,
    ).eval()


def brute_force_box(mask: np.ndarray):
    ys, xs = np.where(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_instance_inference_scores_by_hand():
    mask_cls = torch.tensor([[2.0, 0.0, 5.0], [1.0, 3.0, 0.0]])  # 2 queries, K = 2
    mask_pred = torch.tensor([[[2.0, -1.0], [0.5, -3.0]], [[-1.0, -2.0], [4.0, 1.0]]])
    out = instance_inference(mask_cls, mask_pred, topk=3)
    prob = mask_cls.softmax(-1)[:, :-1]
    order = sorted(((float(prob[q, k]), q, k) for q in range(2) for k in range(2)), reverse=True)[:3]
    assert out["pred_classes"].tolist() == [k for _, _, k in order]
    for (p, q, _), score, mask in zip(order, out["scores"].tolist(), out["pred_masks"]):
        binary = mask_pred[q] > 0
        assert torch.equal(mask, binary)
        mask_score = float((mask_pred[q].sigmoid() * binary).sum() / (binary.sum() + 1e-6))
        assert score == pytest.approx(p * mask_score, rel=1e-5)


def _instances_by_full_resize(logits, scores, labels, padded, image, output):
    """Mask2Former's order written out: every mask upsampled to the padded size, cropped, resized to the output."""
    x = F.interpolate(logits[:, None], size=padded, mode="bilinear", align_corners=False)[:, :, : image[0], : image[1]]
    if image != output:
        x = F.interpolate(x, size=output, mode="bilinear", align_corners=False)
    return masks_to_instances(x[:, 0], scores, labels)


@pytest.mark.parametrize(
    "low,padded,image,output",
    [
        ((16, 16), (64, 64), (64, 64), (160, 160)),  # a test size of 64 for a 160-px photo
        ((16, 12), (64, 48), (61, 45), (122, 90)),  # padding cropped, then upsampled
        ((24, 24), (96, 96), (90, 96), (60, 64)),  # downsampled to the output
        ((8, 8), (32, 32), (32, 32), (32, 32)),  # no second resize
    ],
)
def test_windowed_postprocessing_equals_resizing_every_mask_whole(low, padded, image, output):
    """Each mask resized over its window only gives the masks, boxes and scores of resizing all of it."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(40, 1, low[0] // 4 + 2, low[1] // 4 + 2, generator=g)
    smooth = F.interpolate(coarse, size=low, mode="bilinear", align_corners=False)[:, 0]
    logits = smooth * 4 - torch.linspace(-3, 10, 40)[:, None, None]  # large, small and empty masks
    logits[5] = -1.0
    logits[6] = -1.0
    logits[6, 0, 0] = 0.5  # one positive cell in a corner
    scores, labels = torch.rand(40, generator=g), torch.randint(0, 3, (40,), generator=g)
    expected = _instances_by_full_resize(logits, scores, labels, padded, image, output)
    got = instances_at_size(logits, scores, labels, padded, image, output)
    assert got["pred_masks"].shape == (40, *output) and got["pred_masks"].dtype == torch.bool
    assert torch.equal(got["pred_masks"], expected["pred_masks"])
    assert torch.equal(got["pred_boxes"], expected["pred_boxes"])
    assert torch.equal(got["pred_classes"], expected["pred_classes"])
    assert torch.allclose(got["scores"], expected["scores"], rtol=1e-5, atol=1e-7)
    assert not got["pred_masks"][5].any() and got["scores"][5] == 0 and got["pred_masks"][6].any()
    assert (expected["pred_masks"].flatten(1).sum(1) == 0).sum() >= 5  # the case of empty masks is exercised


def test_topk_over_queries_and_classes_clips_k():
    scores, labels, queries = topk_queries(torch.randn(2, 4), topk=100)
    assert len(scores) == 6 and labels.max() < 3 and queries.max() < 2


def test_pad_images_zero_pads_to_divisibility():
    a, b = torch.ones(3, 10, 33), torch.full((3, 40, 7), 2.0)
    batch, sizes = pad_images([a, b], 32)
    assert batch.shape == (2, 3, 64, 64) and sizes == [(10, 33), (40, 7)]
    assert batch[0, :, :10, :33].eq(1).all() and batch[0, :, 10:].eq(0).all() and batch[0, :, :, 33:].eq(0).all()


def test_eval_outputs_at_original_size_with_tight_boxes():
    model = stub_model(topk=7)
    images = [
        torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8),
        torch.randint(0, 256, (3, 64, 36), dtype=torch.uint8),
    ]
    inputs = [{"image": images[0], "height": 80, "width": 112}, {"image": images[1], "height": 64, "width": 36}]
    results = model(inputs)
    assert len(results) == 2
    padded, sizes = pad_images([(im.float() - 120) / 60 for im in images], 32)
    with torch.no_grad():
        raw = model.forward_network(padded)
    for i, (x, res) in enumerate(zip(inputs, results)):
        inst = res["instances"]
        n = len(inst["scores"])
        assert n == 7
        assert inst["pred_masks"].dtype == torch.bool and inst["pred_masks"].shape == (n, x["height"], x["width"])
        assert inst["pred_classes"].dtype == torch.int64 and inst["pred_classes"].max() < NUM_CLASSES
        assert inst["pred_boxes"].shape == (n, 4) and inst["pred_boxes"].dtype == torch.float32
        assert (inst["scores"] >= 0).all() and (inst["scores"] <= 1).all()
        masks = inst["pred_masks"].numpy()
        assert inst["pred_boxes"].tolist() == [brute_force_box(m) for m in masks]
        # recompute the masks query by query: upsample to the padded size, crop, resize
        scores, labels, queries = topk_queries(raw["pred_logits"][i], 7)
        assert torch.equal(labels, inst["pred_classes"])
        for j, q in enumerate(queries.tolist()):
            up = F.interpolate(raw["pred_masks"][i, q][None, None], size=padded.shape[-2:], mode="bilinear")
            up = up[:, :, : sizes[i][0], : sizes[i][1]]
            up = F.interpolate(up, size=(x["height"], x["width"]), mode="bilinear")[0, 0]
            assert torch.equal(up > 0, inst["pred_masks"][j])
    assert any(r["instances"]["pred_masks"].any() for r in results)


def test_train_mode_returns_weighted_scalar_losses_and_never_reads_masks_in_box_mode():
    model = stub_model().train()
    image = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    gt_masks = torch.zeros(1, 40, 56, dtype=torch.bool)
    gt_masks[0, 5:20, 10:30] = True
    inst = {"gt_boxes": torch.tensor([[10.0, 5.0, 30.0, 20.0]]), "gt_classes": torch.tensor([1]), "gt_masks": gt_masks}
    losses = model([{"image": image, "height": 40, "width": 56, "instances": inst}], iteration=0)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"} and all(v.dim() == 0 for v in losses.values())
    with pytest.raises(ValueError, match="iteration"):
        model([{"image": image, "height": 40, "width": 56, "instances": inst}])
    targets = model.supervision.build_targets(
        [{"image": image, "instances": inst}], (64, 64), model.device, NUM_CLASSES, 0
    )
    assert targets[0]["padding_mask"][:40, :56].logical_not().all() and targets[0]["padding_mask"][40:].all()
    assert targets[0]["masks"].shape == (1, 64, 64) and targets[0]["masks"].sum() == gt_masks.sum()

    class Poison(dict):
        def __getitem__(self, key):
            if key == "gt_masks":
                raise AssertionError("gt_masks read in box supervision")
            return super().__getitem__(key)

    bad = {**inst, "gt_classes": torch.tensor([NUM_CLASSES])}
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        model([{"image": image, "height": 40, "width": 56, "instances": bad}], iteration=0)

    targets = image_targets(
        [{"image": image, "instances": Poison(inst)}], (64, 64), torch.device("cpu"), NUM_CLASSES
    )  # what box and SIM supervision start from
    assert "masks" not in targets[0]


def test_sliding_window_is_used_when_enabled(monkeypatch):
    calls = []

    def fake_sliding_window(infer_fn, image, height, width, **kwargs):
        calls.append((tuple(image.shape), height, width, kwargs))
        tile = infer_fn([{"image": image[:, :32, :32], "height": 32, "width": 32}])[0]["instances"]
        assert tile["pred_masks"].shape[-2:] == (32, 32)
        return tile

    monkeypatch.setattr(meta_arch_module, "sliding_window_inference", fake_sliding_window)
    sw = {"tile_size": 32, "stride": 24, "dedup_iou": 0.5, "border_margin": 2}
    model = stub_model(topk=4, sliding_window=sw)
    image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    results = model([{"image": image, "height": 96, "width": 128}])
    assert calls == [((3, 48, 64), 96, 128, {**sw, "max_dets": 4, "score_threshold": 0.0})]
    assert len(results[0]["instances"]["scores"]) == 4


def test_sliding_window_tiles_skip_queries_below_min_score(monkeypatch):
    """Tile inference gets MIN_SCORE as its score threshold: exactly the instances the merge would keep."""
    seen = {}

    def fake_sliding_window(infer_fn, image, height, width, **kwargs):
        tile = [{"image": image[:, :32, :32], "height": 32, "width": 32}]
        seen["tile"] = infer_fn(tile)[0]["instances"]
        seen["all"] = model.inference(tile)[0]["instances"]
        return seen["tile"]

    monkeypatch.setattr(meta_arch_module, "sliding_window_inference", fake_sliding_window)
    model = stub_model(topk=7)
    image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    scores = model.inference([{"image": image[:, :32, :32], "height": 32, "width": 32}])[0]["instances"]["scores"]
    min_score = float(scores.sort().values[3])  # between the 3rd and 4th lowest: 4 of 7 pass
    model.sliding_window = {"tile_size": 32, "stride": 24, "dedup_iou": 0.5, "border_margin": 2, "min_score": min_score}
    model.predict([{"image": image, "height": 48, "width": 64}])
    keep = seen["all"]["scores"] >= min_score
    assert int(keep.sum()) == 4
    for key in ("scores", "pred_classes", "pred_masks", "pred_boxes"):
        assert torch.equal(seen["tile"][key], seen["all"][key][keep]), key


def test_a_sim_checkpoint_gives_a_predictor_without_training_machinery(tmp_path):
    """The predictor of a SIM config builds the network alone (no teacher, bank, prototypes, criterion), loads the
    student from a training checkpoint (today's names and the older top-level ``sim.`` ones) and predicts what the
    trained model's student predicts; a training forward of that model is an error."""
    from mask2former_sim.config import get_cfg
    from mask2former_sim.engine.checkpoint import Checkpointer
    from mask2former_sim.modeling import build_model
    from mask2former_sim.modeling.sim.teacher import EMATeacher
    from mask2former_sim.predictor import Predictor

    tiny = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "cpu", "tiny-overfit.yaml"
    )
    opts = ["MODEL.MASK_FORMER.SUPERVISION", "sim", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]
    torch.manual_seed(0)
    trained = build_model(get_cfg(tiny, opts)).eval()
    with torch.no_grad():  # a teacher that differs from the student: the predictor must use the student
        for p in trained.supervision.sim.teacher.parameters():
            p.add_(0.5)
    path = Checkpointer(trained, str(tmp_path)).save("model_final", 9)
    state = torch.load(path, weights_only=False)["model"]
    torch.save({"model": {k.replace("supervision.sim.", "sim.", 1): v for k, v in state.items()}}, tmp_path / "old.pth")
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    for weights in (path, str(tmp_path / "old.pth")):
        predictor = Predictor(get_cfg(tiny, [*opts, "MODEL.WEIGHTS", weights]))
        model = predictor.model
        assert model.supervision is None and model.criterion is None
        assert not any(isinstance(m, EMATeacher) for m in model.modules())
        assert not any(k.startswith(("supervision.", "criterion.")) for k in model.state_dict())
        for name, value in model.state_dict().items():
            assert torch.equal(value, trained.state_dict()[name]), name
        assert len(predictor(image)["scores"]) > 0
    model.train()
    with pytest.raises(RuntimeError, match="built for inference"):
        model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8)}], iteration=0)
