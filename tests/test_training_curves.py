"""Training curves: TensorBoard event files beside metrics.json hold the same scalars (read back), and
tools/plot_metrics.py draws several runs' metrics.json into a PNG."""

import json

import pytest
from _engine_fakes import FakeModel, engine_cfg, fake_train_loader
from PIL import Image

from mask2former_sim.engine import Trainer, seed_all_rng
from tools import plot_metrics


def _train(output_dir, tensorboard=True, seed=7):
    cfg = engine_cfg(str(output_dir), LOGGER__TENSORBOARD=tensorboard, SEED=seed, SOLVER__MAX_ITER=10)
    seed_all_rng(cfg.SEED)
    Trainer(cfg, model=FakeModel(), train_loader_fn=fake_train_loader).train()
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = _train(tmp_path / "run")
    events = list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"total_loss", "loss_fit", "loss_noise", "lr"} <= tags
    for key in ("total_loss", "loss_fit", "lr"):
        logged = {r["iteration"]: r[key] for r in records if key in r}
        read = {e.step: e.value for e in acc.Scalars(key)}
        assert sorted(read) == sorted(logged) == [1, 3, 5, 7, 9]  # LOG_PERIOD 2
        for step, value in logged.items():
            assert read[step] == pytest.approx(value, rel=1e-6)
    _train(tmp_path / "off", tensorboard=False)
    assert not list((tmp_path / "off").glob("events.out.tfevents.*"))


def test_plot_metrics_draws_two_runs(tmp_path):
    _train(tmp_path / "a", tensorboard=False, seed=1)
    _train(tmp_path / "b", tensorboard=False, seed=2)
    # an evaluation record, as the trainer appends it, is drawn on the AP panel
    with open(tmp_path / "b" / "metrics.json", "a") as f:
        f.write(json.dumps({"iteration": 9, "segm/AP": 12.5, "bbox/AP": 20.0}) + "\n")
    out = tmp_path / "curves.png"
    plot_metrics.main([str(tmp_path / "a" / "metrics.json"), str(tmp_path / "b"), "--output", str(out)])
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] > 800
    with pytest.raises(SystemExit):
        plot_metrics.main([str(tmp_path / "a"), "--labels", "x", "y", "--output", str(out)])
    (tmp_path / "bad.json").write_text("{broken\n")
    with pytest.raises(ValueError, match="bad.json, line 1"):
        plot_metrics.main([str(tmp_path / "bad.json"), "--output", str(out)])
