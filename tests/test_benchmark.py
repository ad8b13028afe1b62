"""tools/benchmark.py: stage times are exclusive of nested stages, plain training runs every stage the table names
in a profiler range of the code (per mode), and a reduced run of every section produces its tables and files (no
timing is asserted)."""

import itertools
import json
import os

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from mask2former_sim.config import get_cfg
from mask2former_sim.engine.trainer import Trainer
from mask2former_sim.utils.profiling import STAGE_PREFIX, stage
from tools import benchmark

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "cpu", "tiny-overfit.yaml")
MASK_STAGES = {"backbone", "pixel decoder", "transformer decoder", "Hungarian matching", "losses", "backward"}
MASK_STAGES |= {"optimizer step"}
BOX_STAGES = MASK_STAGES | {"box targets (Lab, affinities)", "box fit of the matched masks"}
SIM_STAGES = BOX_STAGES | {"copy-paste (CPU)", "paste targets", "teacher forward", "pseudo masks (Eq. 1, 6, 7)"}
SIM_STAGES |= {"teacher statistics", "prototypes (Sinkhorn)", "bank push", "teacher EMA"}
STAGES = {"mask": MASK_STAGES, "box": BOX_STAGES, "sim": SIM_STAGES}


def test_nested_stage_time_is_charged_once():
    """Ranges in microseconds; each stage keeps its time minus that of the stages nested in it (same track)."""
    ranges = [
        ("outer", 0, 150, "main"),  # 30 + 20 us of its own around two inner calls of 50 us
        ("inner", 30, 80, "main"),
        ("inner", 100, 150, "main"),  # ends with its caller
        ("inner", 1150, 1200, "main"),  # on its own, after time outside any stage
        ("outer", 0, 40, "other thread"),  # nests nothing: another track's ranges are not its children
        ("deep", 2000, 2100, "main"),
        ("deeper", 2000, 2060, "main"),  # starts with its caller
        ("deepest", 2010, 2020, "main"),
        ("overhanging", 2090, 2120, "main"),  # past its caller's end (a device timeline): only the overlap is removed
    ]
    seconds = benchmark.exclusive_stage_seconds(ranges)
    assert seconds["inner"] == pytest.approx(150e-6)
    assert seconds["outer"] == pytest.approx(50e-6 + 40e-6)
    assert seconds["deep"] == pytest.approx((100 - 60 - 10) * 1e-6)
    assert seconds["deeper"] == pytest.approx(50e-6) and seconds["deepest"] == pytest.approx(10e-6)
    assert seconds["overhanging"] == pytest.approx(30e-6)
    assert benchmark.exclusive_stage_seconds([]) == {}


def test_profiled_stage_seconds_reads_the_stage_ranges():
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with stage("outer"):
            torch.ones(64, 64).sum()
            with stage("inner"):
                torch.ones(64, 64).sum()
        with record_function("not a stage"):
            torch.ones(8).sum()
    seconds = benchmark.profiled_stage_seconds(prof.events())
    assert set(seconds) == {"outer", "inner"} and all(v > 0 for v in seconds.values())
    (outer,) = [e for e in prof.events() if e.name == STAGE_PREFIX + "outer"]
    (inner,) = [e for e in prof.events() if e.name == STAGE_PREFIX + "inner"]
    elapsed = (outer.time_range.elapsed_us() - inner.time_range.elapsed_us()) / 1e6
    assert seconds["outer"] == pytest.approx(elapsed)


def _batch(size=32):
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    masks[0, 2:15, 2:15] = True
    masks[1, 5:25, 10:30] = True
    return [
        {
            "image": torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=g),
            "height": size,
            "width": size,
            "padding_mask": torch.zeros(size, size, dtype=torch.bool),
            "instances": {
                "gt_boxes": torch.tensor([[2.0, 2.0, 15.0, 15.0], [10.0, 5.0, 30.0, 25.0]]),
                "gt_classes": torch.tensor([0, 2]),
                "gt_masks": masks,
            },
        }
        for _ in range(2)
    ]


@pytest.mark.parametrize("mode", ["mask", "box", "sim"])
def test_training_runs_every_stage_in_a_profiler_range(mode, tmp_path):
    """One iteration of plain training (``Trainer.train``, hooks included) of the tiny model under the profiler:
    the ``m2f::`` ranges are exactly the stages the benchmark's table names for the mode."""
    overrides = ["MODEL.MASK_FORMER.SUPERVISION", mode, "MODEL.SIM.START_ITER", "0", "MODEL.SIM.COPY_PASTE.PROB"]
    overrides += ["1.0", "MODEL.BOXINST.PAIRWISE.START_ITER", "0", "SOLVER.MAX_ITER", "1", "LOG_PERIOD", "1"]
    overrides += ["OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0"]
    cfg = get_cfg(TINY, [*overrides, "LOGGER.TENSORBOARD", "False"])
    torch.manual_seed(0)
    trainer = Trainer(cfg, train_loader_fn=lambda _cfg, _start: itertools.repeat(_batch()))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train()
    ranges = [e.name[len(STAGE_PREFIX) :] for e in prof.events() if e.name.startswith(STAGE_PREFIX)]
    assert set(ranges) == STAGES[mode]
    assert ranges.count("backbone") == 1  # the student's; the teacher's networks run inside "teacher forward"
    assert ranges.count("bank push") == (2 if mode == "sim" else 0)  # one per image


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
        stages = result["stages_s"]
        # the benchmark's steps measure no statistics, as the training iterations that do not log
        expected = STAGES[mode] - {"teacher statistics", "box fit of the matched masks"}
        assert set(stages) == expected | {"other (targets, Python)"}, mode
        assert result["plain_s"] > 0 and stages["backward"] > 0 and all(v >= 0 for v in stages.values()), mode
        assert sum(stages.values()) == pytest.approx(result["instrumented_s"], rel=1e-6), mode
        assert stages["other (targets, Python)"] < 0.5 * result["instrumented_s"], mode  # the stages are most of it
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
