"""Whole attention heads cut out of attention written by hand (``prune.heads``) through the one cutter: found from
the q/k/v and projection Linears and the head count (an attribute, or the head split of the traced forward held by
an attribute of another name), cut so the model computes what it computed with those heads' values zeroed, the
head count attribute lowered, replayed from the history op; an attention whose head count cannot be read, or whose
forward does not follow the attributes, is left whole and named."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from distillprune.core.history import op_from_dict
from distillprune.export.onnx import onnx_bytes, parity
from distillprune.prune.channels import dependency_graph, enumerate_groups
from distillprune.prune.config import WidthConfig
from distillprune.prune.cut import Cutter
from distillprune.prune.groups import apply_widths
from distillprune.prune.heads import HeadCut, find_attentions

DIM, HEADS, TOKENS = 32, 4, 5


class Fused(nn.Module):
    """timm's layout: one qkv Linear split (3, heads, head_dim), joined back to ``attn_dim``."""

    def __init__(self):
        super().__init__()
        self.num_heads, self.head_dim, self.attn_dim = HEADS, DIM // HEADS, DIM
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = ((q @ k.transpose(-2, -1)) * self.head_dim**-0.5).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, self.attn_dim))


class Separate(nn.Module):
    """q, k, v Linears, ``heads`` attribute, the output projection inside a Sequential, a head size from -1."""

    def __init__(self):
        super().__init__()
        self.heads = HEADS
        self.to_q, self.to_k, self.to_v = (nn.Linear(DIM, DIM, bias=False) for _ in range(3))
        self.to_out = nn.Sequential(nn.Linear(DIM, DIM), nn.Dropout(0.0))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(y.transpose(1, 2).flatten(2))


class OddName(Fused):
    """The head count in an attribute of no known name: read from the head split of the traced forward."""

    def __init__(self):
        super().__init__()
        del self.num_heads
        self.nh = HEADS

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.nh, self.head_dim).permute(2, 0, 3, 1, 4)
        y = ((q @ k.transpose(-2, -1)) * self.head_dim**-0.5).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))


class Literal(Fused):
    """The head count written in the forward, held by no attribute."""

    def __init__(self):
        super().__init__()
        del self.num_heads

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
        y = ((q @ k.transpose(-2, -1)) * 8**-0.5).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))


class Unreadable(Literal):
    """No head count anywhere: the forward splits by the head size."""

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, -1, 8).permute(2, 0, 3, 1, 4)
        y = ((q @ k.transpose(-2, -1)) * 8**-0.5).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))


class InputWidth(Fused):
    """The heads joined back to the input's width (``reshape(b, n, c)``): a head cut cannot fit this forward."""

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = ((q @ k.transpose(-2, -1)) * self.head_dim**-0.5).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Net(nn.Module):
    """Patch embedding, one attention (called ``calls`` times, residually), a classifier."""

    def __init__(self, attention: type[nn.Module], calls: int = 1):
        super().__init__()
        self.embed = nn.Linear(12, DIM)
        self.attn = attention()
        self.calls = calls
        self.head = nn.Linear(DIM, 10)

    def forward(self, x):
        x = self.embed(x)
        for _ in range(self.calls):
            x = x + self.attn(x)
        return self.head(x.mean(1))


def _net(attention: type[nn.Module], calls: int = 1) -> Net:
    torch.manual_seed(0)
    return Net(attention, calls).eval()


X = torch.randn(3, TOKENS, 12)


def _zeroed_values(model: Net, heads: list[int]) -> torch.Tensor:
    """The dense model's output with the values of ``heads`` set to zero."""
    ref = copy.deepcopy(model)
    att = find_attentions(ref)[0]
    cut = HeadCut.of(att, heads)
    with torch.no_grad():
        for t, rows in cut.silenced(ref):  # the value Linear's weight and bias rows of the heads
            t[rows] = 0
        return ref(X)


@pytest.mark.parametrize("kind, count", [(Fused, "num_heads"), (Separate, "heads"), (OddName, "nh")])
def test_whole_heads_are_cut_and_the_model_drops_exactly_them(kind, count):
    model = _net(kind)
    [att] = find_attentions(model)
    assert (att.heads, att.head_dim, att.count, att.why) == (HEADS, DIM // HEADS, count, None)
    want = _zeroed_values(model, [0, 2])
    dg = dependency_graph(model, X)
    result = Cutter(model, dg, X).cut([HeadCut.of(att, [0, 2])])
    assert result.skipped == [] and len(result.heads) == 1 and result.exports == 1
    assert getattr(model.attn, count) == 2
    for name in att.qkv:
        assert model.get_submodule(name).out_features == (3 if att.fused else 1) * DIM // 2
    assert model.get_submodule(att.proj).in_features == DIM // 2
    with torch.no_grad():
        torch.testing.assert_close(model(X), want, rtol=1e-5, atol=1e-5)
    p = parity(model, onnx_bytes(model, (TOKENS, 12)), X)
    assert p["max_abs_diff"] < 1e-4


def test_timm_s_attention_width_attribute_is_lowered_with_the_heads():
    model = _net(Fused)
    Cutter(model, dependency_graph(model, X), X).cut([HeadCut.of(find_attentions(model)[0], [3])])
    assert (model.attn.num_heads, model.attn.head_dim, model.attn.attn_dim) == (3, 8, 24)


def test_a_planned_cut_replays_from_its_history_op():
    model = _net(Fused)
    width = WidthConfig(round_to=4)
    groups = enumerate_groups(model, X, width, 10).groups
    heads = next(g for g in groups if g.attention is not None)
    assert (heads.root, heads.size, heads.step, heads.min_keep, heads.fanout) == ("attn.qkv", 32, 8, 8, {"attn.qkv": 3})
    cut = apply_widths(model, X, width, 10, {heads.root: 16, "embed": 24})
    assert cut.skipped == [] and cut.op is not None and len(cut.op.heads) == 1 and cut.op.entries
    assert cut.op.removed()["attn.qkv"] == 48
    back = _net(Fused)
    op_from_dict(cut.op.to_dict()).replay(back, (TOKENS, 12))
    with torch.no_grad():
        torch.testing.assert_close(back(X), model(X))
    assert back.attn.num_heads == 2 and back.embed.out_features == 24


def test_an_attention_called_twice_is_cut_for_both_uses():
    model = _net(Fused, calls=2)
    want = _zeroed_values(model, [1])
    result = Cutter(model, dependency_graph(model, X), X).cut([HeadCut.of(find_attentions(model)[0], [1])])
    assert result.skipped == [] and model.attn.num_heads == 3
    with torch.no_grad():
        torch.testing.assert_close(model(X), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kind, why",
    [
        (Literal, "splits 4 heads by a number written in its code"),
        (Unreadable, "its head count cannot be read"),
    ],
)
def test_an_attention_whose_head_count_cannot_be_read_is_left_whole_and_named(kind, why):
    model = _net(kind)
    found = enumerate_groups(model, X, WidthConfig(round_to=4), 10)
    groups, skipped = found.groups, found.skipped
    assert [g.root for g in groups] == ["embed"]  # the residual width only: no head group, no q/k/v channels
    [s] = skipped
    assert s.layer == "attn.qkv" and why in s.reason and "attention `attn`" in s.reason and "left whole" in s.reason
    dense = model(X)
    cut = apply_widths(model, X, WidthConfig(round_to=4), 10, {"attn.qkv": 8, "embed": 24})
    assert model.attn.qkv.out_features == 3 * DIM and model.embed.out_features == 24
    assert cut.op is not None and cut.op.heads == [] and dense.shape == model(X).shape


def test_a_forward_that_does_not_follow_the_head_count_is_rolled_back_and_named():
    model = _net(InputWidth)
    dense = model(X)
    [att] = find_attentions(model)
    result = Cutter(model, dependency_graph(model, X), X).cut([HeadCut.of(att, [0])])
    [s] = result.skipped
    assert s.layer == "attn.qkv" and "heads [0] of the 4 of the attention `attn`" in s.reason
    assert "the model no longer runs" in s.reason and "left whole" in s.reason
    assert result.heads == [] and model.attn.num_heads == 4 and model.attn.qkv.out_features == 3 * DIM
    torch.testing.assert_close(model(X), dense)


def test_a_forward_whose_heads_do_not_drop_is_rolled_back():
    """A head count attribute the forward does not use (the split is written in the code): the cut model still
    runs, with the wrong heads; the comparison with the zeroed values catches it."""

    class Ignores(Fused):
        def forward(self, x):
            b, n, _ = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, -1, 8).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            y = ((q @ k.transpose(-2, -1)) * 8**-0.5).softmax(-1) @ v
            y = y.transpose(1, 2).reshape(b, n, -1)
            return self.proj(y.roll(8, -1) if self.num_heads < HEADS else y)  # heads mixed once cut

    model = _net(Ignores)
    result = Cutter(model, dependency_graph(model, X), X).cut([HeadCut.of(find_attentions(model)[0], [0])])
    [s] = result.skipped
    assert "does not drop the removed heads" in s.reason and model.attn.num_heads == 4


def test_a_uniform_width_step_cuts_whole_heads_like_a_plan():
    """One path: a uniform step cuts the attention's whole heads (the nearest whole head to the ratio), as a
    target's plan does, instead of leaving them whole."""
    import distillprune as dp

    model = _net(Separate)
    report = dp.prune_(model, {"width": {"ratio": 0.5, "round_to": 4}}, dp.Examples(X, 10))
    assert not [s for s in report.skipped if s["layer"] == "attn.to_q"]
    assert (model.attn.heads, model.attn.to_q.out_features, model.attn.to_out[0].in_features) == (2, 16, 16)
    assert report.channels_removed["attn.to_q"] == 16 and report.history[0].heads
    assert model.embed.out_features < DIM and model(X).shape == (3, 10)


def test_macs_count_the_matmuls_of_scaled_dot_product_attention():
    """The fused CPU kernel of F.scaled_dot_product_attention is invisible to torch's FLOP counter: counted
    through its math kernel, an attention's MACs are its Linears' plus ``q @ k^T`` and ``softmax @ v``, what the
    planner's layer shapes price."""
    from distillprune.measure.metrics import count_macs
    from distillprune.prune.latency_table import layer_shapes

    model = Separate().eval()
    linears = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear)) * TOKENS
    assert count_macs(model, (TOKENS, DIM)) == linears + 2 * TOKENS * TOKENS * DIM
    shapes = layer_shapes(model, (TOKENS, DIM))
    assert sum(s.macs() for s in shapes.values()) == count_macs(model, (TOKENS, DIM))
    assert {":scores", ":mix"} <= set(shapes)


def test_an_attention_cut_to_one_head_is_still_read_and_not_cut_again():
    model = _net(Fused)
    Cutter(model, dependency_graph(model, X), X).cut([HeadCut.of(find_attentions(model)[0], [0, 1, 2])])
    [att] = find_attentions(model)
    assert (att.heads, att.head_dim, att.count, att.why) == (1, 8, "num_heads", None)
    found = enumerate_groups(model, X, WidthConfig(round_to=4), 10)
    groups, skipped = found.groups, found.skipped
    assert [g.root for g in groups] == ["embed"] and skipped == []
