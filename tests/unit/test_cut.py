"""The one channel cutter: each group cut and checked or rolled back and named; depthwise convs keep
groups == channels; one ONNX check per step, and bisection to the group that breaks the exported graph."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from distillprune.prune.channels import enumerate_groups
from distillprune.prune.config import WidthConfig
from distillprune.prune.cut import Cutter, layer_fault
from distillprune.prune.groups import apply_widths

sys.path.insert(0, str(Path(__file__).parents[1] / "zoo"))
from arch_nets import ARCHS, OTHERS  # noqa: E402

SHAPE = (3, 16, 16)
WIDTH = WidthConfig(round_to=4)


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return {**ARCHS, **OTHERS}[name](10).eval()


def _deepest(model: nn.Module) -> dict[str, int]:
    groups = enumerate_groups(model, torch.zeros(1, *SHAPE), WIDTH, 10).groups
    return {g.root: g.min_keep for g in groups if g.min_keep < g.size}


def test_a_depthwise_conv_cut_without_its_groups_is_a_fault():
    conv = nn.Conv2d(8, 8, 3, groups=8, bias=False)
    model = nn.Sequential(conv)
    assert layer_fault(model, {conv}) is None
    conv.out_channels, conv.weight = 6, nn.Parameter(conv.weight[:6])  # what ORT refuses: M=6, group=8
    assert "not divisible by groups=8" in (layer_fault(model, {conv}) or "")
    conv.in_channels = conv.groups = 6
    assert layer_fault(model, {conv}) is None
    conv.groups = 3  # sizes agree, but it is no longer depthwise
    assert "must keep groups == channels" in (layer_fault(model, {conv}) or "")


def test_depthwise_convs_follow_their_producers():
    model = _model("mobilenet_v2")
    cut = apply_widths(model, torch.zeros(1, *SHAPE), WIDTH, 10, _deepest(model))
    assert cut.skipped == [] and cut.op is not None
    dw = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw and all(m.groups == m.in_channels == m.out_channels for m in dw)
    assert any(m.groups < 64 for m in dw)  # they were cut with their 1x1 expand convs
    assert cut.result.exports == 1 and cut.result.forwards >= len(_deepest(_model("mobilenet_v2")))


def test_a_group_that_breaks_the_forward_is_rolled_back_and_named():
    """A tiny ViT whose attention joins its heads back to the width of its input: cutting the embedding width
    or its heads breaks the forward; those groups are restored exactly, the MLP groups stay cut."""
    model = _model("vit_width")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cut = apply_widths(model, torch.zeros(1, *SHAPE), WIDTH, 10, _deepest(model))
    reasons = {s.layer: s.reason for s in cut.skipped}
    assert "the model no longer runs" in reasons["blocks.1.mlp.2"] and "left whole" in reasons["blocks.1.mlp.2"]
    heads = reasons["blocks.0.attn.qkv"]
    assert "of the 4 of the attention `blocks.0.attn`: the model no longer runs" in heads and "left whole" in heads
    assert model.embed.out_channels == 32 and torch.equal(model.state_dict()["pos"], before["pos"])
    assert model.blocks[0].attn.num_heads == 4 and model.blocks[0].attn.qkv.out_features == 96
    assert model.blocks[0].mlp[0].out_features < 64
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)


def test_raw_parameters_are_never_half_cut_and_a_shared_conv_fits_both_uses():
    model = _model("raw_shared")
    cut = apply_widths(model, torch.zeros(1, *SHAPE), WIDTH, 10, _deepest(model))
    assert [s.layer for s in cut.skipped] == ["mid.0"]
    assert "raw parameter `raw_w` (32, 16, 3, 3)" in cut.skipped[0].reason
    assert tuple(model.raw_w.shape) == (32, 16, 3, 3) and model.stem[0].out_channels == 16
    assert model.shared.out_channels < 32 and model.bn1.num_features == model.bn2.num_features
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)


@pytest.mark.parametrize("bad", ["block1.0.body.0.0", "block2.1.body.1.0"])
def test_an_onnx_failure_is_bisected_to_its_group(monkeypatch, bad):
    """A cut PyTorch accepts but the exported graph does not (simulated: one layer narrower than it was): the
    step's single ONNX check fails, bisection finds that group in ~log2(n) exports, it alone is skipped."""
    model = _model("densenet")
    layer = model.get_submodule(bad)
    width = layer.out_channels

    def fault(self):
        self.result.exports += 1
        return "its ONNX export no longer runs (simulated)" if layer.out_channels < width else None

    monkeypatch.setattr(Cutter, "_onnx_fault", fault)
    keep = _deepest(model)
    cut = apply_widths(model, torch.zeros(1, *SHAPE), WIDTH, 10, keep)
    assert [s.layer for s in cut.skipped] == [bad], cut.skipped
    assert "simulated" in cut.skipped[0].reason
    assert layer.out_channels == width
    assert model.stem[0].out_channels < 16  # every other group stayed cut
    n = len(keep)
    assert cut.result.exports <= 2 + (n - 1).bit_length()  # one check, the bisection, one check after
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)


def test_grouped_convs_keep_their_groups_and_lose_the_same_positions_in_each():
    model = _model("resnext")
    groups = enumerate_groups(model, torch.zeros(1, *SHAPE), WIDTH, 10).groups
    grouped = {g.root: g for g in groups if g.blocks == 4}
    assert set(grouped) >= {"layer.0.body.0.0", "layer.0.body.1.0"}  # the grouped conv's inputs and outputs
    assert all(g.step % 4 == 0 and g.min_keep % 4 == 0 for g in grouped.values())
    keep = {g.root: g.size - 2 * g.step for g in groups}
    cut = apply_widths(model, torch.zeros(1, *SHAPE), WIDTH, 10, keep)
    assert cut.skipped == [] and cut.op is not None
    conv = model.layer[0].body[1][0]
    assert conv.groups == 4 and conv.in_channels == keep["layer.0.body.0.0"] == 32 - 8
    assert conv.out_channels == keep["layer.0.body.1.0"] and conv.weight.shape[1] == conv.in_channels // 4
    idxs = next(e[2] for e in cut.op.entries if e[0] == "layer.0.body.0.0")
    positions = {i % 8 for i in idxs}  # 32 channels = 4 blocks of 8: the same positions cut in every block
    assert len(idxs) == 8 and len(positions) == 2 and set(idxs) == {b * 8 + p for b in range(4) for p in positions}
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)


class _SharedBranch(nn.Module):
    """One conv used as a residual branch and again, plainly: zeroing it as a 'block' would change both."""

    def __init__(self):
        super().__init__()
        self.stem, self.body, self.fc = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1), nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.body(x)
        return self.fc(torch.relu(self.body(x)).mean((2, 3)))


class _SharedBlock(nn.Module):
    """A residual block called twice: the identity is what it becomes at every call, so it stays removable."""

    def __init__(self):
        super().__init__()
        self.stem, self.fc = nn.Conv2d(3, 8, 3, 1, 1), nn.Linear(8, 10)
        self.block = ARCHS["se_resnet"]().layer1[0]

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, x], 1)[:, :16]
        return self.fc(self.block(self.block(x)).mean((2, 3)))


def test_a_shared_layer_is_never_a_half_removed_block():
    from distillprune.prune.depth import removable_blocks

    assert removable_blocks(_SharedBranch()) == []
    assert removable_blocks(_SharedBlock()) == ["block"]


def test_a_model_that_never_exported_keeps_its_cuts(monkeypatch):
    """When the uncut model does not export either, the ONNX check says nothing about the cuts: they stay."""

    def fault(self):
        self.result.exports += 1
        return "its ONNX export no longer runs (simulated)"

    monkeypatch.setattr(Cutter, "_onnx_fault", fault)
    model = _model("se_resnet")
    keep = _deepest(model)
    cut = apply_widths(model, torch.zeros(1, *SHAPE), WIDTH, 10, keep)
    assert cut.skipped == [] and cut.op is not None
    assert {name for name, _, _ in cut.op.entries} == set(keep)
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)


def test_taylor_planning_prices_every_group_of_a_resnet():
    """The planner's survival check cuts a copy, which has no gradients: taylor must not make every group
    'unscorable' there (regression: a ResNet target run found no cuttable group and refused the target)."""
    from unit_helpers import tiny_resnet

    from distillprune.prune.config import WidthConfig
    from distillprune.prune.groups import priced_groups

    model = tiny_resnet().eval()
    x = torch.randn(4, 3, 16, 16)
    model(x).logsumexp(1).mean().backward()
    groups, skipped = priced_groups(model, x[:1], WidthConfig(importance="taylor", round_to=4), 10)
    assert groups and not skipped, [s.reason for s in skipped]
