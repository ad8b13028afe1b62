"""Parameter groups (backbone lr, no decay on norms/embeddings/Swin tables) and gradient clipping."""

import pytest
import torch
from torch import nn

from mask2former_sim.config import get_cfg
from mask2former_sim.engine.optimizer import build_optimizer, clip_gradients, get_param_groups, merge_param_groups


class FrozenBatchNorm2d(nn.Module):
    """Stand-in for a detectron2-style frozen BN that holds trainable-looking parameters."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))


class SwinBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.proj = nn.Linear(4, 4)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), FrozenBatchNorm2d(4), SwinBlock())
        self.backbone.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4))
        self.head = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.query_embed = nn.Embedding(5, 4)
        self.level_embed = nn.Parameter(torch.zeros(3, 4))
        self.frozen = nn.Linear(4, 4)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self.shared = self.head  # the same parameters reachable twice


def _cfg(**solver):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    return cfg


def _by_name(groups):
    """name -> group, for per-parameter groups ("name") and merged ones ("names")."""
    return {name: g for g in groups for name in g.get("names", [g.get("name")])}


def test_param_groups_lr_and_decay():
    model = Toy()
    groups = _by_name(build_optimizer(_cfg(), model).param_groups)
    expected = {
        # name: (lr, weight decay)
        "backbone.0.weight": (1e-5, 0.05),
        "backbone.0.bias": (1e-5, 0.05),
        "backbone.1.weight": (1e-5, 0.0),
        "backbone.1.bias": (1e-5, 0.0),
        "backbone.2.weight": (1e-5, 0.0),
        "backbone.2.bias": (1e-5, 0.0),
        "backbone.3.relative_position_bias_table": (1e-5, 0.0),
        "backbone.3.proj.weight": (1e-5, 0.05),
        "backbone.3.proj.bias": (1e-5, 0.05),
        "backbone.absolute_pos_embed": (1e-5, 0.0),
        "head.weight": (1e-4, 0.05),
        "head.bias": (1e-4, 0.05),
        "norm.weight": (1e-4, 0.0),
        "norm.bias": (1e-4, 0.0),
        "gn.weight": (1e-4, 0.0),
        "gn.bias": (1e-4, 0.0),
        "query_embed.weight": (1e-4, 0.0),
        "level_embed": (1e-4, 0.05),
    }
    assert set(groups) == set(expected)  # frozen params skipped, shared head counted once
    for name, (lr, wd) in expected.items():
        assert groups[name]["lr"] == pytest.approx(lr), name
        assert groups[name]["weight_decay"] == pytest.approx(wd), name


def test_optimizer_groups_merged_by_hyper_parameters():
    model = Toy()
    per_param = get_param_groups(model, 1e-4, 0.05, backbone_multiplier=0.1)
    groups = build_optimizer(_cfg(), model).param_groups
    # (lr, decay) pairs of the Toy: backbone x {decay, none}, head x {decay, none}
    assert sorted((g["lr"], g["weight_decay"]) for g in groups) == sorted(
        {(g["lr"], g["weight_decay"]) for g in per_param}
    )
    assert len(groups) == 4
    for g in groups:
        assert len(g["params"]) == len(g["names"])
        for name, param in zip(g["names"], g["params"]):
            (original,) = [pg for pg in per_param if pg["name"] == name]
            assert original["params"][0] is param
    assert merge_param_groups([]) == []


def test_merged_fused_adamw_step_equals_per_parameter_reference():
    torch.manual_seed(0)
    model, reference = Toy(), Toy()
    reference.load_state_dict(model.state_dict())
    initial = [p.detach().clone() for p in model.parameters()]
    ours = build_optimizer(_cfg(), model)
    ref_groups = get_param_groups(reference, 1e-4, 0.05, backbone_multiplier=0.1)
    ref = torch.optim.AdamW(ref_groups, lr=1e-4, foreach=False, fused=False)
    for step in range(3):
        for m in (model, reference):
            torch.manual_seed(step)
            x = torch.randn(2, 3, 6, 6)
            feats = m.backbone[1](m.backbone[0](x)).mean((2, 3))
            loss = (m.head(feats) + m.norm(feats) + m.query_embed.weight.sum(0) + m.level_embed.sum(0)).pow(2).sum()
            (
                loss + m.backbone[2].weight.sum() + m.backbone[3].proj(feats).sum() + m.gn(feats[..., None]).sum()
            ).backward()
        ours.step()
        ref.step()
        ours.zero_grad()
        ref.zero_grad()
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(model.head.weight, initial[[n for n, _ in model.named_parameters()].index("head.weight")])


def test_norm_and_embed_decay_keys_are_used():
    groups = _by_name(get_param_groups(Toy(), 1.0, 0.05, weight_decay_norm=0.3, weight_decay_embed=0.7))
    assert groups["norm.weight"]["weight_decay"] == 0.3
    assert groups["backbone.1.bias"]["weight_decay"] == 0.3
    assert groups["query_embed.weight"]["weight_decay"] == 0.7
    assert groups["backbone.3.relative_position_bias_table"]["weight_decay"] == 0.0


def test_each_trainable_parameter_exactly_once():
    model = Toy()
    opt = build_optimizer(_cfg(), model)
    in_opt = [id(p) for g in opt.param_groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(in_opt) == len(set(in_opt)) == len(trainable)
    assert set(in_opt) == trainable


def test_sgd_and_unknown_optimizer():
    opt = build_optimizer(_cfg(OPTIMIZER="SGD"), Toy())
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(_cfg(OPTIMIZER="LAMB"), Toy())


def _model_with_grads(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    model(torch.randn(4, 6)).pow(2).sum().mul(100).backward()
    return model


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_full_model_clipping_matches_torch(norm_type):
    ours = _model_with_grads()
    ref = _model_with_grads()
    total = clip_gradients(ours.parameters(), "full_model", 0.01, norm_type)
    ref_total = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.01, norm_type=norm_type)
    assert torch.allclose(total, ref_total)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a.grad, b.grad)
    grads = torch.cat([p.grad.flatten() for p in ours.parameters()])
    assert torch.linalg.vector_norm(grads, norm_type) == pytest.approx(0.01, rel=1e-4)


def test_full_model_clipping_hand_computed():
    p = nn.Parameter(torch.zeros(2))
    q = nn.Parameter(torch.zeros(1))
    p.grad = torch.tensor([3.0, 0.0])
    q.grad = torch.tensor([4.0])  # total L2 norm 5
    clip_gradients([p, q], "full_model", 1.0)
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.0]), atol=1e-6)
    assert torch.allclose(q.grad, torch.tensor([0.8]), atol=1e-6)


def test_per_parameter_norm_and_value_clipping():
    p = nn.Parameter(torch.zeros(2))
    q = nn.Parameter(torch.zeros(1))
    p.grad = torch.tensor([3.0, 4.0])
    q.grad = torch.tensor([0.5])
    clip_gradients([p, q], "norm", 1.0)
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.8]), atol=1e-6)
    assert torch.allclose(q.grad, torch.tensor([0.5]))
    p.grad = torch.tensor([3.0, -0.2])
    clip_gradients([p], "value", 0.5)
    assert torch.allclose(p.grad, torch.tensor([0.5, -0.2]))
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        clip_gradients([p], "bogus", 0.5)
