"""The feral-cats photographs: the registered splits load with the counts of their jsons, and each shipped cats
config (masks, BoxInst-M2F, SIM) trains a few iterations on two photos through train_net.py, with every loss of
its mode acting."""

import json
import os
import subprocess
import sys

import pytest

from mask2former_sim.data import catalog, get_dataset_dicts, get_metadata

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATS = os.path.join(catalog.shared_data_root(), "feral-cats")
needs_cats = pytest.mark.skipif(not os.path.isdir(CATS), reason="shared feral-cats data not present")


@needs_cats
def test_feral_cats_splits_load():
    train, val = get_dataset_dicts("feral_cats_train"), get_dataset_dicts("feral_cats_val")
    assert (len(train), len(val)) == (700, 195)
    assert sum(len(d["annotations"]) for d in train) == 3064
    assert sum(len(d["annotations"]) for d in val) == 785
    assert get_metadata("feral_cats_val")["thing_classes"] == ["cat"]
    assert all(os.path.isfile(d["file_name"]) for d in val[:5])


@pytest.fixture(scope="module")
def two_photos(tmp_path_factory):
    """A json of two training photos with several cats each."""
    src = os.path.join(CATS, "annotations", "instances_train.json")
    if not os.path.isfile(src):
        pytest.skip(f"shared data not found: {src} (set M2F_SIM_SHARED_DATA)")
    with open(src) as f:
        data = json.load(f)
    images = [im for im in data["images"] if im["file_name"] in ("group0003_jpeg.jpg", "group0004_jpeg.jpg")]
    ids = {im["id"] for im in images}
    path = tmp_path_factory.mktemp("cats") / "two.json"
    path.write_text(
        json.dumps({**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]})
    )
    return str(path)


@needs_cats
@pytest.mark.parametrize(
    "config, keys",
    [
        ("m2f_cats_lite0.yaml", ["loss_mask", "loss_dice"]),
        ("boxinst_m2f_cats_lite0.yaml", ["loss_proj", "loss_pairwise"]),
        ("sim_m2f_cats_lite0.yaml", ["loss_proj", "loss_pairwise", "loss_pseudo", "loss_paste"]),
    ],
)
def test_cats_config_trains_on_two_photos(tmp_path, two_photos, config, keys):
    images = os.path.join(CATS, "images")
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        os.path.join(REPO, "train_net.py"),
        "--config-file",
        os.path.join(REPO, "configs", "cpu", config),
    ]
    cmd += ["DATASETS.REGISTER", str([f"two_cats:{two_photos}:{images}"]), "DATASETS.TRAIN", "('two_cats',)"]
    cmd += ["DATASETS.TEST", "('two_cats',)", "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2", "LOG_PERIOD", "1"]
    cmd += ["SOLVER.CHECKPOINT_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)]
    cmd += ["SOLVER.SCHEDULE.ENABLED", "False"]  # the schedule below is set by hand, not by the length rule
    # every term acts within 4 iterations: the pairwise term at full weight from 1, SIM's losses from 2 (low
    # thresholds: the untrained teacher's pseudo masks have foreground, so the bank fills and iteration 3 pastes)
    cmd += ["MODEL.BOXINST.PAIRWISE.START_ITER", "1", "MODEL.BOXINST.PAIRWISE.WARMUP_ITERS", "0"]
    cmd += ["MODEL.SIM.START_ITER", "2", "MODEL.SIM.COPY_PASTE.PROB", "1.0"]
    cmd += ["MODEL.SIM.TAU_LOW", "0.05", "MODEL.SIM.TAU_HIGH", "0.1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    last_step = [r for r in records if "total_loss" in r][-1]
    for key in keys:
        assert last_step[key] > 0, (key, last_step)
    final = json.loads((out / "metrics_final.json").read_text())["results"]
    assert set(final) == {"segm", "bbox"}
