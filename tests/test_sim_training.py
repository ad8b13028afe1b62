"""SIM mode end to end on the tiny model: finite weighted losses with every key in the weight dict, pseudo masks
reach the targets from START_ITER on, pasted instances get the paste and box losses (not the pseudo loss), the
bank fills with input-resolution masks, the prototypes follow the student's features."""

import json
import os

import pytest
import torch

from mask2former_sim.config import get_cfg
from mask2former_sim.modeling import build_model
from mask2former_sim.modeling.criterion import LossContext
from mask2former_sim.modeling.losses.boxinst import BoxInstLoss
from mask2former_sim.modeling.losses.sim import paste_loss_family, pseudo_mask_loss_family, weighted_mask_loss
from mask2former_sim.modeling.sim.memory_bank import decode_masks
from mask2former_sim.modeling.targets import MatchedBatch
from mask2former_sim.structures.boxes import box_raster

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "cpu", "tiny-overfit.yaml")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")  # numpy 2 copy warning


def _cfg(**sim):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.MODEL.MASK_FORMER.SUPERVISION = "sim"
    cfg.MODEL.SIM.START_ITER = 0
    for key, value in sim.items():
        node = cfg.MODEL.SIM
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def _inputs(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(2):
        batch.append(
            {
                "image": torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=g),
                "height": size,
                "width": size,
                "padding_mask": torch.zeros(size, size, dtype=torch.bool),
                "instances": {
                    "gt_boxes": torch.tensor([[2.0, 2.0, 15.0, 15.0], [10.0, 5.0, 30.0, 25.0]]),
                    "gt_classes": torch.tensor([0, 2]),
                },
            }
        )
    return batch


def _sim_model(cfg):
    """The model in training mode, its teacher a copy of the student (what the trainer's hook does)."""
    model = build_model(cfg)
    model.train()
    model.supervision.sim.teacher.copy_from(model)
    return model


def _capture_sim_results(model):
    """Record the targets the SIM part returns and its statistics at every training forward."""
    results = []
    sim = model.supervision.sim
    after_matching = sim.after_matching

    def spy(*args, **kwargs):
        results.append({"targets": after_matching(*args, **kwargs)})
        results[-1]["stats"] = sim.statistics()
        return results[-1]["targets"]

    sim.after_matching = spy
    return results


def _targets_and_matches(model, batch):
    images, _ = model.preprocess_images(batch)
    targets = model.supervision.build_targets(batch, tuple(images.shape[-2:]), model.device, model.num_classes, 0)
    with torch.no_grad():
        outputs = model.forward_network(images)
        indices = model.criterion.match(outputs, targets)
    return images, targets, outputs, indices


def test_sim_training_step_gives_finite_weighted_losses_for_every_key():
    torch.manual_seed(0)
    cfg = _cfg(COPY_PASTE__PROB=1.0)
    model = _sim_model(cfg)
    results = _capture_sim_results(model)
    losses = model(_inputs(), iteration=0)
    weights = model.criterion.weight_dict
    assert set(losses) == set(weights)  # every emitted key is weighted, every weighted key is emitted
    assert {"loss_pseudo", "loss_paste", "loss_proj", "loss_pairwise", "loss_ce", "loss_pseudo_2"} <= set(losses)
    assert weights["loss_pseudo"] == 2.5 and weights["loss_paste"] == 5.0 and weights["loss_pseudo_0"] == 2.5
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_pseudo"].detach()) > 0
    stats = results[0]["stats"]
    assert {f"sim/{k}" for k in ("teacher_box_iou", "teacher_box_fill", "pseudo_fg_fraction", "bank_size")} <= set(
        stats
    )
    assert 0.0 <= stats["sim/teacher_box_fill"] <= 1.0 and stats["sim/started"] == 1.0
    targets = results[0]["targets"]
    assert len(targets) == 2 and targets[0]["pseudo_labels"].shape == (2, 8, 8)
    assert model.training_statistics()["sim/teacher_box_iou"] == stats["sim/teacher_box_iou"]
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.supervision.sim.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.transformer_decoder.parameters())
    # the logged bank size is the bank's at the next step (counted before that step's push)
    pushed = len(model.supervision.sim.bank)
    assert pushed >= 1 and stats["sim/bank_size"] == 0
    model(_inputs(), iteration=1)
    assert model.training_statistics()["sim/bank_size"] == pushed


def test_before_start_iter_only_box_losses_train_but_prototypes_move():
    torch.manual_seed(0)
    model = _sim_model(_cfg(START_ITER=5, PROTO_MOMENTUM=0.5, INSTANCE_MAP_THRESH=0.0))
    results = _capture_sim_results(model)
    sim = model.supervision.sim
    before = sim.prototypes.prototypes.clone()
    losses = model(_inputs(), iteration=0)
    assert float(losses["loss_pseudo"].detach()) == 0 and float(losses["loss_paste"].detach()) == 0
    assert not any("pseudo_labels" in t for t in results[0]["targets"]) and results[0]["stats"]["sim/started"] == 0
    assert not torch.equal(before, sim.prototypes.prototypes)
    assert len(sim.bank) == 0  # the bank fills only once SIM has started
    moved = (before - sim.prototypes.prototypes).abs().sum((1, 2)) > 0
    assert moved.tolist() == [True, False, True]  # classes 0 and 2 present, class 1 absent


def test_copy_paste_in_the_forward_and_pasted_instances_get_paste_and_box_losses_only():
    torch.manual_seed(0)
    model = _sim_model(_cfg(COPY_PASTE__PROB=1.0, TAU_HIGH=0.3, TAU_LOW=0.2))  # low τ_high: masks reach the bank
    model(_inputs(0), iteration=0)
    sim = model.supervision.sim
    assert len(sim.bank) > 0
    entry = sim.bank.entries[0]
    masks = decode_masks(entry["masks"], torch.arange(len(entry["classes"])))
    assert masks.shape[-2:] == (32, 32)  # input resolution, not the stride-4 grid
    assert not bool((masks & ~box_raster(entry["boxes"], 32, 32)).any())  # inside each instance's box raster

    pasted_inputs = sim.prepare_inputs(_inputs(1), iteration=1)
    inst = pasted_inputs[0]["instances"]
    assert bool(inst["pasted"].any()) and inst["paste_masks"].shape[0] == int(inst["pasted"].sum())
    assert "gt_masks" not in inst

    captured = {}
    original = model.criterion.forward

    def spy(outputs, targets, indices=None, iteration=0):
        captured["targets"] = targets
        captured["indices"] = indices
        return original(outputs, targets, indices, iteration)

    model.criterion.forward = spy
    torch.manual_seed(3)
    losses = model(_inputs(1), iteration=1)
    targets = captured["targets"]
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(bool(t["pasted"].any()) for t in targets)  # PROB 1: every image gets a paste
    assert float(losses["loss_paste"].detach()) > 0
    assert isinstance(model.criterion.family("boxinst"), BoxInstLoss)  # applied to every instance
    for t in targets:
        # pasted rows: no pseudo weights and a paste mask; originals: no paste mask
        assert float(t["pseudo_weights"][t["pasted"]].sum()) == 0
        assert float(t["paste_masks"][~t["pasted"]].abs().sum()) == 0
        assert bool((t["paste_masks"][t["pasted"]].flatten(1).sum(1) > 0).all())


def test_box_losses_include_pasted_instances():
    # one image, two matched instances, the second pasted: BoxInst's terms see both (the official code)
    family = build_model(_cfg()).criterion.family("boxinst")
    logits = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    box_masks = torch.zeros(2, 8, 8)
    box_masks[0, 1:4, 1:5] = 1
    box_masks[1, 4:8, 3:7] = 1
    target = {"box_masks": box_masks, "color_similarity": torch.ones(8, 8, 8), "pasted": torch.tensor([False, True])}
    indices = [(torch.tensor([0, 2]), torch.tensor([0, 1]))]
    context = LossContext(num_masks=2.0, iteration=0)
    both = family({"pred_masks": logits}, [target], indices, context)
    unflagged = family({"pred_masks": logits}, [{**target, "pasted": torch.tensor([False, False])}], indices, context)
    first_only = family({"pred_masks": logits}, [target], [(torch.tensor([0]), torch.tensor([0]))], context)
    for key in ("loss_proj", "loss_pairwise"):
        torch.testing.assert_close(both[key], unflagged[key])

    # projection: Σ over both instances / num_masks (dice by hand on the max projections)
    def dice(p, t):
        return 1 - 2 * (p * t).sum() / ((p * p).sum() + (t * t).sum() + 1e-5)

    probs = logits[0].sigmoid()
    expected = (
        sum(
            dice(probs[q].amax(0), box_masks[k].amax(0)) + dice(probs[q].amax(1), box_masks[k].amax(1))
            for q, k in ((0, 0), (2, 1))
        )
        / 2.0
    )
    torch.testing.assert_close(both["loss_proj"], expected)
    assert float(first_only["loss_proj"]) != float(both["loss_proj"])


def test_prototypes_are_centroids_of_the_students_features():
    # momentum 0 and one prototype per class: after one update each present class's prototype is the normalised
    # mean of the STUDENT's normalised features over its pixels (here a constant vector per image), whatever the
    # teacher's features are
    torch.manual_seed(0)
    model = _sim_model(_cfg(START_ITER=10, PROTO_MOMENTUM=0.0, NUM_PROTOTYPES=1, INSTANCE_MAP_THRESH=-1.0))
    batch = _inputs()
    images, targets, outputs, indices = _targets_and_matches(model, batch)
    dim, (h, w) = outputs["mask_features"].shape[1], outputs["mask_features"].shape[-2:]
    student = torch.zeros(2, dim, h, w)
    student[:, 0] = 3.0  # every pixel's student feature is (3, 1, 0, ...)
    student[:, 1] = 1.0
    sim = model.supervision.sim
    sim.after_matching(targets, MatchedBatch(images, batch, {**outputs, "mask_features": student}, indices, 0))
    protos = sim.prototypes.prototypes
    expected = torch.nn.functional.normalize(torch.tensor([3.0, 1.0] + [0.0] * (dim - 2)), dim=0)
    torch.testing.assert_close(protos[0, 0], expected)
    torch.testing.assert_close(protos[2, 0], expected)
    teacher_features = torch.nn.functional.normalize(sim.teacher(images)["mask_features"], dim=1)
    assert not torch.allclose(teacher_features[0, :, 0, 0], expected, atol=1e-3)


def test_pseudo_and_paste_families_by_hand():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = torch.tensor([[2.0, -2.0], [0.0, 1.0]])
    logits[0, 2] = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    target = {
        "pasted": torch.tensor([False, True]),
        "pseudo_labels": torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]),
        "pseudo_weights": torch.tensor([[[1.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]),
        "paste_masks": torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]]),
        "paste_weights": torch.tensor([[[1.0, 1.0], [1.0, 0.0]]] * 2),
    }
    outputs = {"pred_masks": logits}
    indices = [(torch.tensor([1, 2]), torch.tensor([0, 1]))]
    context = LossContext(num_masks=2.0, iteration=0)
    pseudo = pseudo_mask_loss_family()(outputs, [target], indices, context)["loss_pseudo"]
    expected = weighted_mask_loss(logits[0, 1:2], target["pseudo_labels"][:1], target["pseudo_weights"][:1], 2.0)
    torch.testing.assert_close(pseudo, expected)
    paste = paste_loss_family()(outputs, [target], indices, context)["loss_paste"]
    expected = weighted_mask_loss(logits[0, 2:3], target["paste_masks"][1:], target["paste_weights"][1:], 2.0)
    torch.testing.assert_close(paste, expected)
    # before START_ITER there are no pseudo targets: the family emits an exact zero
    no_pseudo = {k: v for k, v in target.items() if not k.startswith("pseudo")}
    assert float(pseudo_mask_loss_family()(outputs, [no_pseudo], indices, context)["loss_pseudo"]) == 0.0


def test_pseudo_loss_divides_by_the_originals_and_paste_loss_by_the_pasted():
    """Eq. 8 normalises over the positives (the original instances), Eq. 9 over the pasted ones: with 3 originals
    and 1 pasted instance the criterion gives the families 3 and 1, not the batch's 4."""
    model = build_model(_cfg())
    criterion = model.criterion
    generator = torch.Generator().manual_seed(1)
    n, h, w = 4, 4, 4
    target = {
        "labels": torch.zeros(n, dtype=torch.int64),
        "pasted": torch.tensor([False, False, True, False]),
        "pseudo_labels": (torch.rand(n, h, w, generator=generator) > 0.5).float(),
        "pseudo_weights": torch.ones(n, h, w),
        "paste_masks": (torch.rand(n, h, w, generator=generator) > 0.5).float(),
        "paste_weights": torch.ones(n, h, w),
        "box_masks": torch.ones(n, h, w),
        "color_similarity": torch.zeros(8, h, w),
    }
    queries = torch.tensor([3, 0, 1, 2])
    outputs = {
        "pred_logits": torch.randn(1, 5, 4, generator=generator),
        "pred_masks": torch.randn(1, 5, h, w, generator=generator),
    }
    losses = criterion(outputs, [target], [[(queries, torch.arange(n))]], iteration=0)
    logits = outputs["pred_masks"][0, queries]
    original = ~target["pasted"]
    expected_pseudo = (
        sum(
            weighted_mask_loss(
                logits[k : k + 1], target["pseudo_labels"][k : k + 1], target["pseudo_weights"][k : k + 1], 1.0
            )
            for k in range(n)
            if original[k]
        )
        / 3.0
    )
    expected_paste = weighted_mask_loss(logits[2:3], target["paste_masks"][2:3], target["paste_weights"][2:3], 1.0)
    torch.testing.assert_close(losses["loss_pseudo"], expected_pseudo)
    torch.testing.assert_close(losses["loss_paste"], expected_paste)


def test_pseudo_masks_use_the_teachers_masks_at_the_students_matches():
    torch.manual_seed(0)
    model = build_model(_cfg())
    model.train()
    sim = model.supervision.sim
    sim.teacher.copy_from(model)
    images, targets, outputs, indices = _targets_and_matches(model, _inputs())
    with torch.no_grad():
        teacher_out = sim.teacher(images)
    assert "positives" not in sim.pseudo_masks(teacher_out, targets, indices, sim.prototypes.prototypes)[0]
    sim.pseudo_masks.record_positives = True  # the visualiser's debugging view
    results = sim.pseudo_masks(teacher_out, targets, indices, sim.prototypes.prototypes)
    heads = [teacher_out] + teacher_out["aux_outputs"]
    res = results[0]
    pos = res["positives"][0]
    assert len(pos) == len(heads)  # the GT's matched query at every head
    probs = torch.stack([heads[h]["pred_masks"][0, q].sigmoid() for h, q, _ in pos])
    w = torch.tensor([wt for _, _, wt in pos])
    torch.testing.assert_close(res["instance"][0], (w[:, None, None] * probs).sum(0), rtol=1e-5, atol=1e-6)
    outside = targets[0]["box_masks"][0] == 0
    assert bool(outside.any()) and float(res["prob"][0][outside].abs().sum()) > 0  # Eq. 7 is not cut by the box
    # outside the box: label 0 with weight 1 (certain background, the default); "ignore" gives weight 0
    assert float(res["labels"][0][outside].sum()) == 0 and bool((res["weights"][0][outside] == 1).all())
    inside = ~outside
    sim.pseudo_masks.outside_box = "ignore"
    ignored = sim.pseudo_masks(teacher_out, targets, indices, sim.prototypes.prototypes)[0]
    assert float(ignored["weights"][0][outside].sum()) == 0
    torch.testing.assert_close(ignored["weights"][0][inside], res["weights"][0][inside])  # the box is unchanged


def test_statistics_are_measured_on_logging_iterations_only(tmp_path, monkeypatch):
    """SIM's teacher statistics and the matched masks' box fit wait for the device: the trainer asks for them on the
    iterations that log (every LOG_PERIOD = 2 and the last: 1, 3, 4 of 0-4) and nowhere else."""
    from _engine_fakes import make_tiny_dataset, real_model_cfg

    from mask2former_sim.engine import Trainer
    from mask2former_sim.modeling import pairwise_schedule
    from mask2former_sim.modeling.sim import supervisor

    cfg = real_model_cfg(
        str(tmp_path / "out"),
        make_tiny_dataset(str(tmp_path / "data")),
        SOLVER__MAX_ITER=5,
        SOLVER__CHECKPOINT_PERIOD=0,
    )
    cfg.MODEL.MASK_FORMER.SUPERVISION = "sim"
    measured = {"teacher": [], "box_fit": []}
    trainer = Trainer(cfg)
    real_teacher, real_box = supervisor.teacher_statistics, pairwise_schedule.mask_box_iou
    monkeypatch.setattr(
        supervisor, "teacher_statistics", lambda *a: measured["teacher"].append(trainer.iter) or real_teacher(*a)
    )
    monkeypatch.setattr(
        pairwise_schedule, "mask_box_iou", lambda *a: measured["box_fit"].append(trainer.iter) or real_box(*a)
    )
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert measured == {"teacher": [1, 3, 4], "box_fit": [1, 3, 4]}
    records = [json.loads(line) for line in open(tmp_path / "out" / "metrics.json")]
    assert [r["iteration"] for r in records if "sim/teacher_box_iou" in r] == [1, 3, 4]
    assert all("box_fit/box_iou" in r for r in records if "total_loss" in r)
