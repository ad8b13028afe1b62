"""The shipped YAML configs: every file loads, box/SIM variants differ from their fully supervised config only in
supervision keys, every fully supervised config has a BoxInst-M2F variant, and the CPU box config builds."""

from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import yaml

from mask2former_sim.config import get_cfg

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))
# Keys a box or SIM variant may change with respect to its fully supervised config.
SUPERVISION_KEYS = ("MODEL.MASK_FORMER.SUPERVISION",)
SUPERVISION_PREFIXES = ("MODEL.BOXINST.", "MODEL.SIM.")
FREE_KEYS = ("OUTPUT_DIR",)


def _rel(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _base_of(path: Path) -> Optional[Path]:
    with open(path) as f:
        base = (yaml.safe_load(f) or {}).get("_BASE_")
    return (path.parent / base).resolve() if base else None


def _nearest_mask_ancestor(path: Path) -> Optional[Path]:
    """The closest config up the ``_BASE_`` chain whose supervision is "mask"."""
    base = _base_of(path)
    while base is not None:
        if get_cfg(str(base)).MODEL.MASK_FORMER.SUPERVISION == "mask":
            return base
        base = _base_of(base)
    return None


def _is_supervision_key(key: str) -> bool:
    return key in SUPERVISION_KEYS or key in FREE_KEYS or key.startswith(SUPERVISION_PREFIXES)


BOX_YAML = [p for p in ALL_YAML if p.name.startswith(("boxinst_m2f_", "sim_m2f_"))]


def test_there_are_configs_to_check():
    assert len(ALL_YAML) >= 20 and len(BOX_YAML) >= 9


@pytest.mark.parametrize("path", ALL_YAML, ids=_rel)
def test_every_config_loads(path):
    cfg = get_cfg(str(path))  # unknown keys and missing _BASE_ files raise
    assert cfg.MODEL.MASK_FORMER.SUPERVISION in ("mask", "box", "sim")
    expected = "mask"
    if path.name.startswith("boxinst_m2f_"):
        expected = "box"
    elif path.name.startswith("sim_m2f_"):
        expected = "sim"
    assert cfg.MODEL.MASK_FORMER.SUPERVISION == expected, f"{_rel(path)}: SUPERVISION does not match its name"


@pytest.mark.parametrize("path", BOX_YAML, ids=_rel)
def test_box_variant_differs_from_its_mask_config_only_in_supervision_keys(path):
    base = _nearest_mask_ancestor(path)
    assert base is not None, f"{_rel(path)}: no fully supervised config up its _BASE_ chain"
    stem = path.stem.split("_m2f_", 1)[1]
    assert base.stem in (f"m2f_{stem}", f"maskformer2_{stem}"), f"{_rel(path)} is based on {base.name}"
    mine, theirs = _flatten(get_cfg(str(path))), _flatten(get_cfg(str(base)))
    assert mine.keys() == theirs.keys()
    changed = sorted(k for k in mine if mine[k] != theirs[k])
    assert "MODEL.MASK_FORMER.SUPERVISION" in changed
    assert [k for k in changed if not _is_supervision_key(k)] == [], f"{_rel(path)} vs {base.name}"
    if path.parent.name == "cpu":  # CPU runs of both modes must not share an output folder
        assert mine["OUTPUT_DIR"] != theirs["OUTPUT_DIR"]


def _mask_configs():
    coco = sorted((CONFIGS / "coco" / "instance-segmentation").rglob("maskformer2_*.yaml"))
    cpu = sorted((CONFIGS / "cpu").glob("m2f_*.yaml"))
    return coco + cpu


@pytest.mark.parametrize("path", _mask_configs(), ids=_rel)
def test_every_fully_supervised_config_has_a_boxinst_variant(path):
    if path.parent.name == "cpu":
        variant = path.parent / f"boxinst_{path.name}"
    else:
        variant = CONFIGS / "coco" / "box-supervised" / path.name.replace("maskformer2_", "boxinst_m2f_")
    assert variant.is_file(), f"{_rel(path)} has no BoxInst-M2F variant {_rel(variant)}"
    assert _base_of(variant) == path.resolve()


def test_coco_box_configs_keep_mask2former_schedule_and_start_the_warmup_on_formed_masks():
    for path in sorted((CONFIGS / "coco" / "box-supervised").glob("boxinst_m2f_*.yaml")):
        cfg = get_cfg(str(path))
        epochs_100 = "100ep" in path.name
        assert cfg.SOLVER.MAX_ITER == (737500 if epochs_100 else 368750), path.name
        assert cfg.SOLVER.IMS_PER_BATCH == 16
        assert cfg.MODEL.BOXINST.PAIRWISE.WARMUP_ITERS == 10000
        # the warm-up starts once the matched masks have formed, not at iteration 0
        # (docs/experiments/photographs_supervision_modes.md)
        assert cfg.MODEL.BOXINST.PAIRWISE.START_BOX_IOU == pytest.approx(0.47), path.name
        assert cfg.MODEL.BOXINST.BOTTOM_PIXELS_REMOVED == 10


def test_cpu_box_warmup_is_scaled_to_the_schedule():
    for path in sorted((CONFIGS / "cpu").glob("boxinst_m2f_*.yaml")):
        cfg = get_cfg(str(path))
        fraction = cfg.MODEL.BOXINST.PAIRWISE.WARMUP_ITERS / cfg.SOLVER.MAX_ITER
        assert 0.05 <= fraction <= 0.2, f"{path.name}: pairwise warm-up is {fraction:.0%} of the schedule"


def test_cpu_box_config_builds_a_box_model():
    from mask2former_sim.modeling import build_model
    from mask2former_sim.modeling.losses.boxinst import BoxInstLoss, BoxProjectionCost

    cfg = get_cfg(str(CONFIGS / "cpu" / "boxinst_m2f_synthetic_tiny.yaml"))
    model = build_model(cfg)
    assert model.supervision.mode == "box" and model.supervision.part_names == ["box_targets", "pairwise_schedule"]
    box = model.supervision.box_targets
    assert (box.stride, box.kernel_size, box.dilation, box.theta, box.bottom_pixels_removed) == (4, 3, 2, 2.0, 0)
    criterion = model.criterion
    assert criterion.family_names == ["labels", "boxinst"]
    assert isinstance(criterion.family("boxinst"), BoxInstLoss)
    assert criterion.family("boxinst").schedule.warmup_iters == 100
    assert isinstance(criterion.matcher.cost, BoxProjectionCost)
    num_heads = cfg.MODEL.MASK_FORMER.DEC_LAYERS
    # BoxInst's pairwise term, after projection alone for the first half of the run
    # (docs/experiments/pairwise_term_collapse.md)
    assert criterion.family("boxinst").schedule.start_iter == 400
    for key, weight in (("loss_ce", 2.0), ("loss_proj", 5.0), ("loss_pairwise", 5.0)):
        assert criterion.weight_dict[key] == weight
        assert criterion.weight_dict[f"{key}_{num_heads - 2}"] == weight
    assert not any(k.startswith(("loss_mask", "loss_dice")) for k in criterion.weight_dict)


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("sim_m2f_*.yaml")), ids=lambda p: p.name)
def test_sim_configs_start_sim_after_the_pairwise_warmup(path):
    """The paper's order: projection + pairwise first, SIM's pseudo and paste losses once the warm-up has ended
    (an adaptive pairwise start makes SIM wait for it at run time)."""
    cfg = get_cfg(str(path))
    pw = cfg.MODEL.BOXINST.PAIRWISE
    if pw.START_BOX_IOU == 0:
        assert cfg.MODEL.SIM.START_ITER >= pw.START_ITER + pw.WARMUP_ITERS
    else:
        assert cfg.MODEL.SIM.START_ITER >= pw.WARMUP_ITERS  # the earliest; SIM also waits for the adaptive start
