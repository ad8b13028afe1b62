"""tools/benchmark.py: stage times are exclusive, patches are undone, the stages it names exist on a real SIM model,
and a reduced run of every section produces its tables and files (no timing is asserted)."""

import json
import os
import types

import pytest
import torch

from mask2former_sim.config import get_cfg
from mask2former_sim.engine.trainer import Trainer
from tools import benchmark

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "cpu", "tiny-overfit.yaml")


def test_nested_stage_time_is_charged_once():
    now = [0.0]  # a fake clock: the timed bodies advance it by exact amounts

    def work(seconds):
        now[0] += seconds

    timer = benchmark.StageTimer(torch.device("cpu"), clock=lambda: now[0])
    inner = timer.wrap("inner", lambda: work(0.05))

    def outer_body():
        work(0.03)
        inner()
        work(0.02)
        inner()

    outer = timer.wrap("outer", outer_body)
    outer()  # disabled: nothing recorded
    assert dict(timer.seconds) == {}
    timer.enabled = True
    outer()
    work(1.0)  # time outside any stage is charged to none
    inner()
    assert timer.seconds["inner"] == pytest.approx(0.15)  # three calls: two inside outer, one on its own
    assert timer.seconds["outer"] == pytest.approx(0.05)  # its own 30 + 20 ms, not the 150 ms it spans
    failing = timer.wrap("failing", lambda: (work(0.01), inner(), 1 / 0))
    outer_of_failing = timer.wrap("outer of failing", lambda: (work(0.04), failing()))
    with pytest.raises(ZeroDivisionError):  # a stage that raises is still charged, and unwound
        outer_of_failing()
    assert timer.seconds["failing"] == pytest.approx(0.01) and timer.seconds["inner"] == pytest.approx(0.2)
    assert timer.seconds["outer of failing"] == pytest.approx(0.04) and timer._children == []


def test_patched_restores_instance_and_module_attributes():
    class Thing:
        def method(self):
            return 1

    thing = Thing()
    module = types.SimpleNamespace(function=lambda: 2)
    original_function = module.function
    with (
        benchmark.patched(thing, "method", lambda fn: lambda: fn() + 10),
        benchmark.patched(module, "function", lambda fn: lambda: fn() + 20),
    ):
        assert thing.method() == 11 and module.function() == 22
    assert thing.method() == 1 and "method" not in vars(thing)  # the class method shows through again
    assert module.function is original_function
    backward = torch.autograd.backward
    with benchmark.patched(torch.autograd, "backward", lambda fn: fn):
        pass
    assert torch.autograd.backward is backward


def test_every_stage_exists_on_a_sim_trainer():
    cfg = get_cfg(TINY, ["MODEL.MASK_FORMER.SUPERVISION", "sim", "OUTPUT_DIR", ""])
    trainer = Trainer(cfg, train_loader_fn=lambda _cfg, _start: iter(()))
    stages = benchmark.stage_patches(trainer)
    names = [name for _, _, name in stages]
    assert {
        "backbone",
        "pixel decoder",
        "transformer decoder",
        "backward",
        "teacher forward",
        "pseudo masks (Eq. 1, 6, 7)",
        "losses",
        "Hungarian matching",
        "bank push",
    } <= set(names)
    for obj, attr, name in stages:
        assert callable(getattr(obj, attr)), f"stage {name!r}: {type(obj).__name__}.{attr} is missing"


@pytest.mark.slow
def test_reduced_run_writes_every_table(tmp_path):
    out = tmp_path / "bench"
    report = benchmark.main(
        [
            "--config-file",
            os.path.join(REPO, "configs", "cpu", "sim_m2f_synthetic_tiny.yaml"),
            "--smoke",
            "--compare-transformers",
            "--scaling",
            "--msda",
            "--forward",
            "64",
            "--evaluation",
            "--profile",
            "1",
            "--ab-opts",
            "MODEL.BACKBONE.CHANNELS_LAST",
            "False",
            "--output-dir",
            str(out),
            "--opts",
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES",
            "10",
        ]
    )
    assert set(report["training"]) == {"mask", "box", "sim"}
    for mode, result in report["training"].items():
        assert result["plain_s"] > 0 and result["stages_s"]["backward"] > 0, mode
    transformers = report["transformers"]
    assert transformers["plain_s"] > 0 and report["data"]["step_s"] > 0
    ((ours, theirs),) = transformers["pairs_s"]  # one alternated pair in --smoke
    assert transformers["ratio"] == pytest.approx(ours / theirs)
    assert report["inference"]["whole image"] > 0 and report["forward"]["seconds"] > 0
    assert set(report["scaling"]["instances"]) == {1, 30} and report["msda"]["pytorch forward ms"] > 0
    assert report["ab"]["overrides"] == ["MODEL.BACKBONE.CHANNELS_LAST", "False"] and report["ab"]["ratio"] > 0
    text = (out / "benchmark.md").read_text()
    headings = ("## Training step", "## A/B of config overrides", "## Data loading", "## Inference", "## Scaling")
    for heading in (*headings, "## Network forward", "## Evaluation", "## Profile: sim training step"):
        assert heading in text
    stages = report["evaluation"]["ms_per_image"]
    assert set(stages) == {"read and resize the image", "network", "post-processing", "RLE encoding"}
    assert all(v > 0 for v in stages.values()) and report["evaluation"]["cocoeval_s"] > 0
    for name in ("mask training step", "sim training step", "evaluation of one test image"):
        rows = report["profile"][name]
        assert rows and all(r["ms"] >= 0 and r["calls"] > 0 for r in rows), name
        assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)  # by self time
    assert any(r["operator"] == "aten::convolution_backward" for r in report["profile"]["mask training step"])
    assert "ours / transformers" in text and (out / "scaling.png").is_file()
    assert json.loads((out / "benchmark.json").read_text())["config"].endswith("sim_m2f_synthetic_tiny.yaml")


def test_inference_only_run_times_no_training(tmp_path):
    config = os.path.join(REPO, "configs", "cpu", "sim_m2f_synthetic_tiny.yaml")
    opts = ["--opts", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10"]
    report = benchmark.main(["--config-file", config, "--smoke", "--modes", "--output-dir", str(tmp_path), *opts])
    assert report["training"] == {} and "data" not in report
    assert report["inference"]["images"] == 1 and report["inference"]["whole image"] > 0
    assert "## Training step" not in (tmp_path / "benchmark.md").read_text()


def test_inference_against_transformers_alternates_the_two(tmp_path):
    """--transformers-inference: the predictor and transformers' processor + model + post-processing, one pair per
    size in --smoke; the weights are the same (their logits agree: tests/test_transformers_equivalence.py)."""
    config = os.path.join(REPO, "configs", "cpu", "sim_m2f_synthetic_tiny.yaml")
    opts = ["--opts", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10"]
    argv = ["--config-file", config, "--smoke", "--modes", "--no-inference", "--transformers-inference", "64"]
    report = benchmark.main([*argv, "--output-dir", str(tmp_path), *opts])
    ((ours, theirs),) = report["transformers_inference"]["sizes"][64]["pairs_s"]
    assert ours > 0 and theirs > 0 and report["transformers_inference"]["threshold"] == 0.0
    assert "## Inference against transformers" in (tmp_path / "benchmark.md").read_text()


def test_against_a_commit_alternates_two_processes(tmp_path):
    """--baseline-ref: the step of a commit (here HEAD) and of this tree, each in its own worker process."""
    config = os.path.join(REPO, "configs", "cpu", "m2f_synthetic_tiny.yaml")
    opts = ["--opts", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10"]
    report = benchmark.main(
        ["--config-file", config, "--smoke", "--modes", "mask", "--baseline-ref", "HEAD", "--no-data"]
        + ["--no-inference", "--output-dir", str(tmp_path), *opts]
    )
    result = report["against_ref"]
    assert len(result["commit"]) == 40
    ((base, mine),) = result["modes"]["mask"]["pairs_s"]  # one alternated pair in --smoke
    assert base > 0 and mine > 0 and result["modes"]["mask"]["ratio"] == pytest.approx(mine / base)
    assert "## Against commit HEAD" in (tmp_path / "benchmark.md").read_text()


def test_against_a_commit_rejects_an_unknown_ref(tmp_path):
    with pytest.raises(SystemExit, match="not a commit"):
        benchmark.export_tree("no-such-ref", str(tmp_path))
