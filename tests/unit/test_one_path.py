"""One way to cut: a uniform width step and a target's planned step read the same enumerator (the same pre-checks,
the same whole-head policy) and cut through the same cutter, so where they choose the same groups they cut the
model the same way -- on a model with hand-written attention and a concat feeding a grouped conv."""

from __future__ import annotations

import copy

import torch
from torch import nn

import distillprune as dp
from distillprune.prune.channels import enumerate_groups
from distillprune.prune.config import PruneConfig, WidthConfig
from distillprune.prune.planner import Plan
from distillprune.prune.schedule import Initial, uniform_keep

WIDTH = {"ratio": 0.5, "round_to": 4}


def cbr(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Attention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = ((q @ k.transpose(-2, -1)) * self.head_dim**-0.5).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))


class ConvAttention(nn.Module):
    """Two stems concatenated into a grouped conv, a cuttable conv, then attention over the positions."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(3, 16)
        self.g = cbr(32, 32, groups=2)
        self.mid = cbr(32, 32)
        self.embed = nn.Linear(32, 32)
        self.attn = Attention()
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.g(torch.cat([self.a(x), self.b(x)], 1)))
        t = self.embed(x.flatten(2).transpose(1, 2))
        t = t + self.attn(t)
        return self.fc(t.mean(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = ConvAttention().eval()
    for bn in m.modules():  # trained-like statistics
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return m


def test_a_uniform_step_and_a_target_cut_the_same_groups_the_same_way():
    x = torch.randn(4, 3, 8, 8)
    uniform, planned = _model(), _model()
    # the uniform step (BatchNorm re-estimated on the calibration batch, as a planned step does)
    u = dp.prune_(uniform, {"width": WIDTH, "bn_calib_samples": 4}, dp.Examples(x, 10))
    # a target whose plan chooses what the uniform step chose, group by group
    found = enumerate_groups(copy.deepcopy(planned), x[:1], WidthConfig(**WIDTH), 10)
    keep = uniform_keep(found.groups, Initial(), WIDTH["ratio"], 0.9)
    plan = Plan({"macs_ratio": 2.0}, widths={g.root: [keep.get(g.root, g.size), g.size] for g in found.groups})
    cfg = PruneConfig(width=WIDTH, target={"macs_ratio": 2.0}, recovery={"method": "none"})
    session = dp.PruneSession(planned, cfg, dp.Examples(x, 10))
    session.structure.plan = lambda: plan  # type: ignore[method-assign]
    p = session.run()

    assert [op.to_dict() for op in u.history] == [op.to_dict() for op in p.history]
    assert u.skipped == p.skipped
    # the concat into the grouped conv stays whole in both, named; the heads are cut whole in both
    assert {s["layer"] for s in u.skipped} == {"a.0", "b.0"}
    assert all("concat feeding a grouped conv at `g.0`" in s["reason"] for s in u.skipped)
    assert uniform.attn.num_heads == planned.attn.num_heads == 2 and uniform.attn.qkv.out_features == 48
    assert uniform.mid[0].out_channels == planned.mid[0].out_channels < 32
    a, b = uniform.state_dict(), planned.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert uniform(x).shape == (4, 10)


def test_a_criterion_never_scores_what_it_cannot_read_some_other_way():
    """``bn_scale`` reads BatchNorm scales: the attention's heads and the Linear groups have none, so they stay
    whole and are named (never scored as ``l2``); the conv groups are cut."""
    m = _model()
    report = dp.prune_(m, {"width": {**WIDTH, "importance": "bn_scale"}}, dp.Examples(torch.randn(4, 3, 8, 8), 10))
    reasons = {s["layer"]: s["reason"] for s in report.skipped}
    assert "an attention's heads have none" in reasons["attn.qkv"] and m.attn.num_heads == 4
    assert "bn_scale finds no BatchNorm in it" in reasons["embed"]
    assert m.mid[0].out_channels < 32


def test_an_unknown_or_foreign_criterion_is_one_line():
    from distillprune.core.config import validate
    from distillprune.errors import RecipeError

    for name, why in (
        ("l3", "'l3' is unknown (did you mean 'l2'?); expected one of: bn_scale, l1, l2, taylor"),
        ("fisher", "'fisher' does not score a cnn's groups"),
    ):
        try:
            validate(WidthConfig, {"importance": name}, where="width")
        except RecipeError as e:
            assert why in str(e) and "\n" not in str(e), str(e)
        else:
            raise AssertionError(f"{name} was accepted")
