"""tools/benchmark_sim_step.py: stage times are exclusive (a nested stage is not counted twice), the patches are
undone, and the stages it names exist on a real SIM model (a renamed method must break this test, not the GPU
run)."""

import os
import time
import types

import pytest
import torch

from mask2former_sim.config import get_cfg
from mask2former_sim.engine.trainer import Trainer

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "cpu", "tiny-overfit.yaml")


@pytest.fixture(scope="module")
def tool():
    from tools import benchmark_sim_step

    return benchmark_sim_step


def test_nested_stage_time_is_charged_once(tool):
    timer = tool.StageTimer(torch.device("cpu"))
    inner = timer.wrap("inner", lambda: time.sleep(0.05))

    def outer_body():
        time.sleep(0.03)
        inner()

    outer = timer.wrap("outer", outer_body)
    outer()  # disabled: nothing recorded
    assert dict(timer.seconds) == {}
    timer.enabled = True
    outer()
    assert 0.05 <= timer.seconds["inner"] < 0.5
    assert 0.03 <= timer.seconds["outer"] < 0.075  # its own 30 ms, not the >= 80 ms it spans


def test_patched_restores_instance_and_class_attributes(tool):
    class Thing:
        def method(self):
            return 1

    thing = Thing()
    module = types.SimpleNamespace(function=lambda: 2)
    original_function = module.function
    with (
        tool.patched(thing, "method", lambda fn: lambda: fn() + 10),
        tool.patched(module, "function", lambda fn: lambda: fn() + 20),
    ):
        assert thing.method() == 11 and module.function() == 22
    assert thing.method() == 1 and "method" not in vars(thing)  # the class method shows through again
    assert module.function is original_function


def test_every_stage_exists_on_a_sim_trainer(tool):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.MODEL.MASK_FORMER.SUPERVISION = "sim"
    cfg.OUTPUT_DIR = ""
    trainer = Trainer(cfg, train_loader_fn=lambda _cfg, _start: iter(()))
    stages = tool.stage_patches(trainer, tool.StageTimer(torch.device("cpu")))
    names = [name for _, _, name in stages]
    assert {"teacher forward", "pseudo masks (Eq. 1, 6, 7)", "losses", "Hungarian matching"} <= set(names)
    for obj, attr, name in stages:
        assert callable(getattr(obj, attr)), f"stage {name!r}: {type(obj).__name__}.{attr} is missing"
