"""SIM's EMA teacher: the formula after k steps, frozen and outside the optimizer, copied after weight loading,
kept on resume; a resumed SIM run continues with the same teacher and prototypes."""

import os

import pytest
import torch
from torch import nn

from mask2former_sim.engine import Trainer, seed_all_rng
from mask2former_sim.engine.optimizer import get_param_groups
from mask2former_sim.modeling.sim.teacher import EMATeacher, EMATeacherHook


def _student():
    torch.manual_seed(0)
    student = nn.Module()
    student.backbone = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    student.pixel_decoder, student.transformer_decoder = nn.Linear(4, 2), nn.Dropout(0.5)
    return student


def test_ema_equals_the_formula_after_k_steps():
    student = _student()
    parts = [student.backbone, student.pixel_decoder, student.transformer_decoder]
    teacher = EMATeacher(backbone=parts[0], pixel_decoder=parts[1], transformer_decoder=parts[2], momentum=0.9)
    teacher.copy_from(student)
    t0 = [p.clone() for p in teacher.parameters()]
    history = []
    for k in range(3):
        with torch.no_grad():
            for p in (q for part in parts for q in part.parameters()):
                p.add_(0.1 * (k + 1))
        parts[0][1].running_mean.fill_(float(k))
        history.append([p.clone() for part in parts for p in part.parameters()])
        teacher.update(student)
    for i, p in enumerate(teacher.parameters()):
        expected = t0[i]
        for step in history:
            expected = 0.9 * expected + 0.1 * step[i]
        torch.testing.assert_close(p, expected)
    assert torch.equal(teacher.backbone[1].running_mean, torch.full((4,), 2.0))  # buffers copied
    assert bool(teacher.initialized)


def test_teacher_is_frozen_in_eval_mode_and_outside_the_optimizer():
    from mask2former_sim.config import get_cfg
    from mask2former_sim.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "configs", "cpu", "tiny-overfit.yaml"))
    cfg.MODEL.MASK_FORMER.SUPERVISION = "sim"
    model = build_model(cfg)
    model.train()
    teacher = model.supervision.sim.teacher
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher_ids = {id(p) for p in teacher.parameters()}
    group_ids = {id(p) for g in get_param_groups(model, 1e-4, 0.05) for p in g["params"]}
    assert group_ids and not group_ids & teacher_ids
    assert {id(p) for p in model.parameters() if p.requires_grad}.isdisjoint(teacher_ids)
    # weights are copied from the (loaded) student once; a restored teacher is kept
    with torch.no_grad():
        model.backbone.parameters().__next__().add_(1.0)
    assert not bool(teacher.initialized)
    hook = EMATeacherHook(teacher, model)
    hook.before_train()
    s_first, t_first = next(model.backbone.parameters()), next(teacher.backbone.parameters())
    assert torch.equal(s_first, t_first) and s_first.data_ptr() != t_first.data_ptr()
    with torch.no_grad():
        s_first.add_(1.0)
    hook.before_train()  # an initialised (or restored) teacher is not copied again
    assert not torch.equal(s_first, t_first)
    assert any(k.startswith("supervision.sim.teacher.") for k in model.state_dict())
    assert "supervision.sim.prototypes.prototypes" in model.state_dict()


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from _engine_fakes import make_tiny_dataset

    return make_tiny_dataset(str(tmp_path_factory.mktemp("sim_data") / "tiny"))


@pytest.mark.slow
def test_resumed_sim_run_continues_with_the_same_teacher_and_prototypes(tmp_path, tiny_dataset):
    from _engine_fakes import real_model_cfg, train_real_interrupted

    def run(out, stop_at=None, resume=False):
        cfg = real_model_cfg(str(out), tiny_dataset, SOLVER__MAX_ITER=2, SOLVER__CHECKPOINT_PERIOD=1)
        cfg.MODEL.MASK_FORMER.SUPERVISION = "sim"
        cfg.MODEL.SIM.START_ITER = 1  # pseudo loss on in the resumed iteration
        cfg.MODEL.SIM.EMA_MOMENTUM = 0.5  # the teacher moves visibly
        cfg.MODEL.SIM.PROTO_MOMENTUM = 0.5
        cfg.MODEL.SIM.COPY_PASTE.ENABLED = False  # the bank is not checkpointed (see memory_bank.py)
        return train_real_interrupted(cfg, stop_at, resume)

    full = run(tmp_path / "full")
    teacher = full.model.supervision.sim.teacher
    student_w = next(full.model.backbone.parameters())
    assert not torch.equal(next(teacher.backbone.parameters()), student_w)  # EMA lags the student
    run(tmp_path / "split", stop_at=1)  # stopped after the checkpoint of iteration 0
    resumed = run(tmp_path / "split", resume=True)
    assert resumed.start_iter == 1
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    checked = [k for k in full_state if k.startswith("supervision.sim.")]
    assert "supervision.sim.prototypes.prototypes" in checked
    assert any(k.startswith("supervision.sim.teacher.") for k in checked)
    for name in full_state:
        torch.testing.assert_close(full_state[name], resumed_state[name], rtol=0, atol=1e-6, msg=name)


class _TeacherSupervision:
    """The supervision interface the trainer asks for hooks: SIM's teacher hook."""

    def __init__(self, teacher):
        self.teacher = teacher

    def hooks(self, model):
        return [EMATeacherHook(self.teacher, model)]

    def set_statistics_due(self, due):
        pass


class TeacherFakeModel(nn.Module):
    """The engine's fake model with a SIM-style EMA teacher submodule (frozen; the EMATeacherHook its supervision
    gives the trainer copies the student into it before training and updates it after each optimizer step)."""

    def __init__(self):
        super().__init__()
        from _engine_fakes import FakeModel

        self.student = FakeModel()
        self.backbone, self.pixel_decoder = self.student.backbone, self.student.head
        self.transformer_decoder = nn.Identity()
        self.teacher = EMATeacher(
            backbone=self.backbone,
            pixel_decoder=self.pixel_decoder,
            transformer_decoder=self.transformer_decoder,
            momentum=0.5,
        )
        self.supervision = _TeacherSupervision(self.teacher)

    def forward(self, batch, iteration=None):
        assert bool(self.teacher.initialized), "the hook copies the student before training"
        losses = self.student(batch, iteration)
        with torch.no_grad():  # the teacher takes part in the forward, as in SIM, without gradients
            x = torch.stack([d["x"] for d in batch])
            target = self.teacher.pixel_decoder(self.teacher.backbone(x))
        losses["loss_fit"] = losses["loss_fit"] + 0.0 * target.sum()
        return losses


def _teacher_run(output_dir):
    from _engine_fakes import engine_cfg, fake_train_loader

    cfg = engine_cfg(output_dir, SOLVER__MAX_ITER=3, SOLVER__CHECKPOINT_PERIOD=0)
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg, model=TeacherFakeModel(), train_loader_fn=fake_train_loader)
    trainer.resume_or_load(resume=False)
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    core = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    assert not optimized & {id(p) for p in core.teacher.parameters()}
    trainer.train()
    assert all(p.grad is None for p in core.teacher.parameters())
    return {k: v.clone() for k, v in core.teacher.state_dict().items()}


def _teacher_worker(output_dir):
    from mask2former_sim.utils import comm

    torch.save(_teacher_run(output_dir), os.path.join(output_dir, f"teacher{comm.get_rank()}.pt"))


def test_teacher_under_ddp_is_outside_gradient_sync_and_identical_on_every_rank(tmp_path):
    """Two gloo processes: DDP (find_unused_parameters False) accepts the frozen teacher, the EMA after each step
    gives the same teacher on both ranks, equal to one process with the whole batch."""
    from mask2former_sim.engine import launch

    single = _teacher_run(str(tmp_path / "single"))
    out = str(tmp_path / "ddp")
    os.makedirs(out)
    launch(_teacher_worker, num_gpus_per_machine=2, dist_url="auto", args=(out,))
    for rank in range(2):
        state = torch.load(os.path.join(out, f"teacher{rank}.pt"), weights_only=True)
        for name, value in single.items():
            torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6, msg=f"rank {rank} {name}")
