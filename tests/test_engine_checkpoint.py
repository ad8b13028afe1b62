"""Checkpoints: full round trip, weights_only loading, clear errors, weight loading, SIGKILL-safe writes."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

from mask2former_sim.config import get_cfg
from mask2former_sim.engine.checkpoint import (
    Checkpointer,
    CheckpointError,
    load_checkpoint_file,
    load_model_weights,
)
from mask2former_sim.engine.lr_scheduler import WarmupMultiStepLR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Counter:
    """An extra stateful object (stands in for a teacher or a prototype bank)."""

    def __init__(self) -> None:
        self.value = torch.zeros(3)

    def state_dict(self):
        return {"value": self.value.clone()}

    def load_state_dict(self, state):
        self.value = state["value"].clone()


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = WarmupMultiStepLR(opt, milestones=[3], warmup_iters=2, warmup_factor=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, opt, sched, scaler


def _train(model, opt, sched, steps):
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()


def test_round_trip_restores_everything(tmp_path):
    model, opt, sched, scaler = _setup()
    extra = Counter()
    extra.value += 7
    _train(model, opt, sched, 3)
    cfg = get_cfg()
    ckpt = Checkpointer(model, str(tmp_path), opt, sched, scaler, extra={"bank": extra}, cfg=cfg)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = ckpt.save("model_0000002", iteration=2)
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item())
    assert os.path.basename(path) == "model_0000002.pth"
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert not list(tmp_path.glob("*.tmp"))

    data = torch.load(path, weights_only=True)  # everything is weights_only-safe
    assert set(data) >= {"model", "optimizer", "scheduler", "scaler", "iteration", "rng", "extra", "cfg"}
    assert data["iteration"] == 2 and "SOLVER" in data["cfg"]

    model2, opt2, sched2, scaler2 = _setup(seed=99)
    extra2 = Counter()
    ckpt2 = Checkpointer(model2, str(tmp_path), opt2, sched2, scaler2, extra={"bank": extra2})
    assert ckpt2.resume_or_load("", resume=True) == 3
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_draws
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(extra2.value, extra.value)
    assert sched2.last_epoch == sched.last_epoch
    torch.manual_seed(5)
    _train(model, opt, sched, 2)
    torch.manual_seed(5)
    _train(model2, opt2, sched2, 2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_resume_without_checkpoint_loads_weights(tmp_path):
    model, *_ = _setup()
    weights = tmp_path / "w.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, weights)
    model2, opt2, sched2, _ = _setup(seed=1)
    ckpt = Checkpointer(model2, str(tmp_path / "out"), opt2, sched2)
    assert ckpt.resume_or_load(str(weights), resume=True) == 0
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


def test_not_a_checkpoint_gives_clear_error(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_checkpoint_file(str(text))
    model, opt, sched, scaler = _setup()
    path = Checkpointer(model, str(tmp_path), opt, sched, scaler).save("model_final", 0)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(path, "rb").read()[:500])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_model_weights(model, str(truncated))
    raw = tmp_path / "raw.pth"
    torch.save([1, 2, 3], raw)
    with pytest.raises(CheckpointError, match="raw.pth.*training checkpoint"):
        Checkpointer(model, str(tmp_path)).load(str(raw))
    with pytest.raises(CheckpointError, match="raw.pth"):
        load_model_weights(model, str(raw))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_model_weights(model, str(tmp_path / "missing.pth"))


class _Opaque:
    pass


def test_weights_only_refusal_and_trusted_fallback(tmp_path, caplog):
    model, *_ = _setup()
    path = tmp_path / "pickled.pth"
    torch.save({"model": model.state_dict(), "meta": _Opaque()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_model_weights(model, str(path))
    with caplog.at_level("WARNING"):
        data = load_checkpoint_file(str(path), allow_pickle=True)
    assert "trusted pickle" in caplog.text
    assert isinstance(data["meta"], _Opaque)


def test_load_model_weights_prefixes_shapes_and_keys(tmp_path, caplog):
    model, *_ = _setup()
    state = {"module." + k: v.clone() + 1 for k, v in model.state_dict().items()}
    state["module.extra.weight"] = torch.zeros(1)  # unexpected
    numpy_state = {"model": {k: (v.numpy() if k.endswith("0.bias") else v) for k, v in state.items()}}
    path = tmp_path / "ours.pth"
    torch.save({"model": state, "iteration": 5}, path)
    target, *_ = _setup(seed=1)
    with caplog.at_level("WARNING"):
        missing, unexpected, skipped = load_model_weights(nn.DataParallel(target), str(path))
    assert skipped == [] and unexpected == ["extra.weight"] and missing == []
    assert "extra.weight" in caplog.text
    assert torch.equal(target.state_dict()["0.weight"], state["module.0.weight"])
    path_np = tmp_path / "np.pth"
    torch.save(numpy_state, path_np)
    load_model_weights(target, str(path_np), allow_pickle=True)
    assert torch.equal(target.state_dict()["0.bias"], state["module.0.bias"])
    state["module.2.weight"] = torch.zeros(5, 8)  # another shape: an error naming the key, nothing loaded
    torch.save({"model": state}, path)
    before = target.state_dict()["0.weight"].clone()
    with pytest.raises(CheckpointError, match=r"ours.pth: '2.weight' has shape \(5, 8\) in the file and \(2, 8\)"):
        load_model_weights(target, str(path))
    assert torch.equal(target.state_dict()["0.weight"], before)


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    sys.path.insert(0, {repo!r})
    from mask2former_sim.engine.checkpoint import Checkpointer
    model = nn.Linear(1024, 1024)  # 4 MB of weights, plus 8 MB of AdamW state
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1024)).sum().backward()
    opt.step()
    ckpt = Checkpointer(model, {out!r}, opt)
    i = {start}
    while True:
        with torch.no_grad():
            model.bias.fill_(float(i))
        ckpt.save("model_%07d" % (i % 3), i)
        print(i, flush=True)
        i += 1
    """
)


def test_sigkill_during_checkpoint_writing_never_leaves_a_bad_last_checkpoint(tmp_path):
    out = str(tmp_path / "out")
    rng = random.Random(0)
    start = 0
    tmp_seen = 0
    for _ in range(4):
        script = _WRITER.format(repo=REPO, out=out, start=start)
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # at least one complete save in this round
        assert first.strip(), "writer subprocess produced no checkpoint"
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        tmp_seen += bool(list((tmp_path / "out").glob("*.tmp")))
        target = nn.Linear(1024, 1024)
        opt = torch.optim.AdamW(target.parameters())
        ckpt = Checkpointer(target, out, opt)
        last = ckpt.last_checkpoint_path()
        assert last is not None and last.endswith(".pth") and os.path.isfile(last)
        iteration = ckpt.resume_or_load("", resume=True) - 1
        assert iteration >= int(first)
        assert torch.all(target.bias == float(iteration))  # the stored weights belong to the stored iteration
        start = iteration + 1
    # informative only: how often the kill landed while a temporary file was being written
    print(f"kills that interrupted a write: {tmp_seen}/4")
