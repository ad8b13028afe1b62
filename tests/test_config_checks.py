"""The config values we support (mask2former_sim/config/checks.py): Mask2Former / detectron2 keys kept for their
YAML files must hold the one value implemented, and training needs SOLVER.MAX_ITER > 0; both fail before anything
is built, with the key, the value found and the value supported."""

import argparse
from pathlib import Path

import pytest
import torch

import train_net
from mask2former_sim.config import check_supported_choices, check_training_config, get_cfg
from mask2former_sim.config.checks import SUPPORTED_CHOICES, SameAs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _other_value(value):
    """A value of the same type as ``value`` that differs from it."""
    if value is None:
        return 0.125
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "X"
    return [*value[:-1], 2]


def _set(cfg, key, value):
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    node[leaf] = value


def test_defaults_and_every_shipped_config_are_supported():
    check_supported_choices(get_cfg())
    check_training_config(get_cfg())
    for path in sorted(CONFIGS.rglob("*.yaml")):
        check_supported_choices(get_cfg(str(path)))
        check_training_config(get_cfg(str(path)))


@pytest.mark.parametrize("key", sorted(SUPPORTED_CHOICES))
def test_any_other_value_is_an_error_naming_key_value_and_supported_value(key):
    cfg = get_cfg()
    rule = SUPPORTED_CHOICES[key]
    supported = get_cfg().MODEL.BACKBONE.OUT_FEATURES if isinstance(rule, SameAs) else rule.value
    other = ["res3", "res4", "res5"] if isinstance(rule, SameAs) else _other_value(rule.value)
    _set(cfg, key, other)
    with pytest.raises(ValueError) as err:
        check_supported_choices(cfg)
    message = str(err.value)
    assert message.startswith(f"{key} = {other!r} is not supported"), message
    assert f"implements only {supported!r}" in message


@pytest.mark.parametrize(
    "override, supported",
    [
        (["MODEL.RESNETS.STRIDE_IN_1X1", "True"], "False"),
        (["MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "True"], "False"),
        (["MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "True"], "False"),
        (["MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "BasePixelDecoder"], "'MSDeformAttnPixelDecoder'"),
        (["INPUT.COLOR_AUG_SSD", "True"], "False"),
        (["MODEL.RESNETS.NORM", "SyncBN"], "'FrozenBN'"),
        (["DATALOADER.ASPECT_RATIO_GROUPING", "True"], "False"),
    ],
)
def test_upstream_settings_we_do_not_implement_are_rejected(override, supported):
    with pytest.raises(ValueError, match=f"{override[0]} = .* implements only {supported}"):
        check_supported_choices(get_cfg(overrides=override))


def test_feature_lists_must_be_the_backbones():
    cfg = get_cfg(overrides=["MODEL.BACKBONE.OUT_FEATURES", "['res3', 'res4', 'res5']"])
    with pytest.raises(ValueError) as err:
        check_supported_choices(cfg)
    lines = str(err.value).splitlines()  # every offending key, one line each
    assert [line.split(" = ")[0] for line in lines] == ["MODEL.SWIN.OUT_FEATURES", "MODEL.RESNETS.OUT_FEATURES"]
    assert all("(MODEL.BACKBONE.OUT_FEATURES)" in line for line in lines)
    for key in ("MODEL.SWIN.OUT_FEATURES", "MODEL.RESNETS.OUT_FEATURES"):
        _set(cfg, key, ("res3", "res4", "res5"))  # a tuple equals the list
    check_supported_choices(cfg)


def test_an_upstream_yaml_with_an_unsupported_value_builds_no_model(tmp_path):
    from mask2former_sim.modeling import MaskFormer

    yaml_file = tmp_path / "upstream.yaml"
    yaml_file.write_text(
        f"_BASE_: {CONFIGS / 'cpu' / 'tiny-overfit.yaml'}\nMODEL:\n  RESNETS:\n    STRIDE_IN_1X1: True\n"
    )
    with pytest.raises(ValueError, match="MODEL.RESNETS.STRIDE_IN_1X1 = True"), torch.device("meta"):
        MaskFormer.from_config(get_cfg(str(yaml_file)))


@pytest.mark.parametrize("max_iter", [0, -5])
def test_training_needs_a_positive_max_iter(max_iter):
    with pytest.raises(ValueError, match=f"SOLVER.MAX_ITER = {max_iter}: training needs SOLVER.MAX_ITER > 0"):
        check_training_config(get_cfg(overrides=["SOLVER.MAX_ITER", str(max_iter)]))
    check_training_config(get_cfg(overrides=["SOLVER.MAX_ITER", "1"]))


def _args(output_dir, eval_only, *opts):
    return argparse.Namespace(
        config_file=str(CONFIGS / "cpu" / "tiny-overfit.yaml"),
        opts=["OUTPUT_DIR", str(output_dir), *opts],
        eval_only=eval_only,
        num_gpus=0,
        resume=False,
    )


def test_train_net_stops_before_making_anything_when_max_iter_is_not_positive(tmp_path):
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="SOLVER.MAX_ITER = -5"):
        train_net.setup(_args(output_dir, False, "SOLVER.MAX_ITER", "-5"))
    assert not output_dir.exists()  # no folder, log, config.yaml or model
    with pytest.raises(ValueError, match="MODEL.MASK_FORMER.TEST.PANOPTIC_ON = True"):
        train_net.setup(_args(output_dir, True, "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "True"))
    assert not output_dir.exists()


def test_train_net_eval_only_ignores_max_iter(tmp_path, monkeypatch):
    monkeypatch.setattr(train_net, "setup_logger", lambda *args, **kwargs: None)  # leave the process's logging
    monkeypatch.setattr(train_net, "default_setup", lambda cfg, args: 0)  # and its seeds as they are
    cfg = train_net.setup(_args(tmp_path / "out", True, "SOLVER.MAX_ITER", "-5"))
    assert cfg.SOLVER.MAX_ITER == -5 and cfg.is_frozen()


def test_train_net_applies_the_schedule_rule_to_its_overrides(tmp_path, monkeypatch):
    """``train_net.py --config-file <cats config> SOLVER.MAX_ITER 4400``: the rule's counts for 4,400 iterations, not
    the defaults (an error) or the file's 1,000 (the CLI's MAX_ITER is the one the rule follows)."""
    monkeypatch.setattr(train_net, "setup_logger", lambda *args, **kwargs: None)
    monkeypatch.setattr(train_net, "default_setup", lambda cfg, args: 0)
    args = _args(tmp_path / "out", False, "SOLVER.MAX_ITER", "4400")
    args.config_file = str(CONFIGS / "cpu" / "sim_m2f_cats_lite0.yaml")
    cfg = train_net.setup(args)
    assert tuple(cfg.SOLVER.STEPS) == (3740,) and cfg.SOLVER.WARMUP_ITERS == 220
    assert cfg.SOLVER.CHECKPOINT_PERIOD == 1100
    assert (cfg.MODEL.BOXINST.PAIRWISE.START_ITER, cfg.MODEL.BOXINST.PAIRWISE.WARMUP_ITERS) == (2200, 484)
    assert cfg.MODEL.SIM.START_ITER == 2684 and cfg.MODEL.SIM.EMA_MOMENTUM == pytest.approx(1 - 1 / 440)


@pytest.mark.parametrize(
    "override, named",
    [
        (["INPUT.MIN_SIZE_TEST", "256"], ["INPUT.MIN_SIZE_TEST = 256 (default 800)"]),
        (["INPUT.MAX_SIZE_TEST", "500"], ["INPUT.MAX_SIZE_TEST = 500 (default 1333)"]),
        (["INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "256"], ["MIN_SIZE_TEST = 256", "MAX_SIZE_TEST = 256"]),
    ],
)
def test_test_scale_with_a_test_size_is_an_error_naming_both_keys(override, named):
    """INPUT.TEST_SCALE > 0 replaces the test size: setting both fails (model, checks and the test mapper) instead
    of ignoring the size without a word."""
    from mask2former_sim.data.mapper import build_test_resize
    from mask2former_sim.modeling import build_model

    cfg = get_cfg(overrides=["INPUT.TEST_SCALE", "1.5", *override])
    for check in (check_supported_choices, build_test_resize, build_model):
        with pytest.raises(ValueError, match="INPUT.TEST_SCALE = 1.5") as err:
            check(cfg)
        assert all(text in str(err.value) for text in named), str(err.value)


def test_test_scale_alone_or_a_test_size_alone_is_fine():
    from mask2former_sim.data.mapper import build_test_resize
    from mask2former_sim.data.transforms import RandomScale, ResizeShortestEdge

    scale_only = get_cfg(overrides=["INPUT.TEST_SCALE", "1.5"])
    check_supported_choices(scale_only)
    assert isinstance(build_test_resize(scale_only), RandomScale)
    size_only = get_cfg(overrides=["INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "256"])
    check_supported_choices(size_only)
    assert isinstance(build_test_resize(size_only), ResizeShortestEdge)
