"""Resume reproduces an uninterrupted run; the loop logs, checkpoints, and handles non-finite losses."""

import functools
import json
import os

import pytest
import torch
from _engine_fakes import FakeModel, StopTraining, engine_cfg, fake_train_loader

from mask2former_sim.engine import Trainer, seed_all_rng


def _stopping_loader(cfg, start_iter, stop_at_iter):
    """The fake stream that raises when the micro-batches of iteration ``stop_at_iter`` are requested."""
    accum = cfg.SOLVER.GRAD_ACCUM_STEPS
    for n, batch in enumerate(fake_train_loader(cfg, start_iter)):
        if start_iter + n // accum >= stop_at_iter:
            raise StopTraining
        yield batch


def _trainer(cfg, loader_fn, **model_kw):
    seed_all_rng(cfg.SEED)  # what default_setup does at the start of every process
    return Trainer(cfg, model=FakeModel(global_rng=True, **model_kw), train_loader_fn=loader_fn)


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_matches_uninterrupted_run(tmp_path, accum):
    cfg_full = engine_cfg(str(tmp_path / "full"), SOLVER__GRAD_ACCUM_STEPS=accum)
    full = _trainer(cfg_full, fake_train_loader)
    full.resume_or_load(resume=False)
    full.train()

    cfg = engine_cfg(str(tmp_path / "split"), SOLVER__GRAD_ACCUM_STEPS=accum)
    first = _trainer(cfg, functools.partial(_stopping_loader, stop_at_iter=7))
    first.resume_or_load(resume=True)
    with pytest.raises(StopTraining):
        first.train()
    assert (tmp_path / "split" / "last_checkpoint").read_text() == "model_0000005.pth"

    calls = []
    second = _trainer(cfg, functools.partial(fake_train_loader, calls=calls))
    assert second.resume_or_load(resume=True) == 6
    second.train()
    assert calls == [6]  # the data stream restarts at the first iteration not yet done
    assert second.model.iters_seen == [i for i in (6, 7) for _ in range(accum)]  # every micro-batch's forward
    for (name, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name  # bitwise on the CPU
    assert full.optimizer.param_groups[0]["lr"] == second.optimizer.param_groups[0]["lr"]


def test_outputs_logs_and_metrics(tmp_path, caplog):
    cfg = engine_cfg(str(tmp_path))
    trainer = _trainer(cfg, fake_train_loader)
    with caplog.at_level("INFO", logger="mask2former_sim"):
        trainer.train()
    files = sorted(os.listdir(tmp_path))
    assert {"model_0000002.pth", "model_0000005.pth", "model_final.pth", "last_checkpoint"} <= set(files)
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 3, 5, 7]
    for r in records:
        assert {"total_loss", "loss_fit", "loss_noise", "lr", "time", "data_time", "eta_seconds"} <= set(r)
        assert r["total_loss"] == pytest.approx(r["loss_fit"] + r["loss_noise"], rel=0.5)
    # lr logged at iteration 7: after the milestone 5 → base lr x 0.1
    assert records[-1]["lr"] == pytest.approx(1e-3)
    assert "iter 8/8" in caplog.text and "eta" in caplog.text and "loss_fit" in caplog.text
    assert json.loads((tmp_path / "metrics_final.json").read_text())["iteration"] == 7


def test_nonfinite_loss_skips_the_step(tmp_path, caplog):
    cfg = engine_cfg(str(tmp_path), SOLVER__MAX_ITER=4, SOLVER__CHECKPOINT_PERIOD=0)
    trainer = _trainer(cfg, fake_train_loader, nan_at={1})
    snapshots = []
    original = trainer.run_step

    def recording_step():
        losses = original()
        snapshots.append([p.detach().clone() for p in trainer.model.parameters()])
        return losses

    trainer.run_step = recording_step
    with caplog.at_level("WARNING"):
        trainer.train()
    assert "iteration 1: non-finite loss in loss_noise" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1]))  # step 1 skipped
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))  # training went on
    assert trainer.nonfinite_in_a_row == 0
    assert trainer.scheduler.last_epoch == 4


def test_consecutive_nonfinite_losses_stop_training(tmp_path):
    cfg = engine_cfg(str(tmp_path), SOLVER__MAX_CONSECUTIVE_NONFINITE=3, SOLVER__CHECKPOINT_PERIOD=0)
    trainer = _trainer(cfg, fake_train_loader, nan_at={2, 3, 4, 5})
    with pytest.raises(FloatingPointError, match=r"iteration 4.*3 consecutive.*loss_noise \(3x\)"):
        trainer.train()


def test_model_must_return_scalar_losses(tmp_path):
    class Bad(FakeModel):
        def forward(self, batch, iteration=None):
            return {"loss_vec": torch.ones(3, requires_grad=True)}

    seed_all_rng(0)
    trainer = Trainer(engine_cfg(str(tmp_path)), model=Bad(), train_loader_fn=fake_train_loader)
    with pytest.raises(TypeError, match="loss_vec.*scalar"):
        trainer.train()


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from _engine_fakes import make_tiny_dataset

    return make_tiny_dataset(str(tmp_path_factory.mktemp("engine_data") / "tiny"))


@pytest.mark.slow
def test_resume_with_the_real_tiny_model(tmp_path, tiny_dataset):
    """The real model and loader (random point sampling from the global RNG): resumed == uninterrupted."""
    from _engine_fakes import real_model_cfg, train_real_interrupted

    def run(out, stop_at=None, resume=False):
        cfg = real_model_cfg(str(out), tiny_dataset, SOLVER__MAX_ITER=3, SOLVER__CHECKPOINT_PERIOD=2)
        return train_real_interrupted(cfg, stop_at, resume)

    full = run(tmp_path / "full")
    run(tmp_path / "split", stop_at=2)  # stopped after the checkpoint of iteration 1
    resumed = run(tmp_path / "split", resume=True)
    assert resumed.start_iter == 2
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
