"""The generality matrix of the latency-target feature: each architecture of ``arch_nets`` (depthwise, LayerNorm
through permutes, hand-written attention -- its heads cut whole --, raw parameters and a shared conv, SE, concat)
under a target. Either
the plan lands in the band -- then the pruned model runs, its ONNX export agrees with PyTorch, the checkpoint
reloads through ``load_checkpoint``, and the report names every group left whole -- or one line says the
cuttable layers cannot reach the target. Never an internal error.

MACs targets keep the fast tests deterministic on a loaded CPU; the ``slow`` test runs each architecture under
a measured latency target."""

from __future__ import annotations

import arch_nets
import pytest
import torch
from arch_nets import ARCHS, OTHERS

import distillprune as dp
from distillprune.errors import DistillpruneError
from distillprune.export.onnx import onnx_bytes, parity

SHAPE = (3, 16, 16)
TOL = 0.25  # the planner's default band: [target, target * 1.25]

#: the groups each architecture leaves whole (by root layer) and what the reason must say
LEFT_WHOLE = {
    "mobilenet_v2": {},
    "convnext": {},
    "vit": {},  # its heads are cut whole (num_heads and attn_dim lowered)
    "vit_unread": {  # no head count: the heads stay whole
        "blocks.0.attn.qkv": "the head channels of the attention `blocks.0.attn`: its head count cannot be read",
        "blocks.1.attn.qkv": "the head channels of the attention `blocks.1.attn`: its head count cannot be read",
    },
    "raw_shared": {"mid.0": "raw parameter `raw_w` (32, 16, 3, 3)"},
    "se_resnet": {},
    "densenet": {},
    "resnext": {},
}
#: the MACs ratio each reaches at most (measured, default width.max_ratio, depth 0 or half the blocks): above it
#: the target is refused in one line naming this best plan
REACH = {"raw_shared": 3.47}


def build(name: str):
    torch.manual_seed(0)
    cls = {**ARCHS, **OTHERS}[name]
    model, spec = dp.make_model({"python": f"{arch_nets.__file__}:{cls.__name__}"}, 10, SHAPE)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval(), spec


def run(name: str, target: dict, tmp_path):
    model, spec = build(name)
    cfg = {"width": {"round_to": 4}, "target": {**target, "depth_fractions": [0.0, 0.5], "refits": 1}}
    x = torch.randn(16, *SHAPE)
    return model, spec, dp.prune_(model, cfg, dp.Examples(x, 10), history=spec)


def check(model, spec, report, name, tmp_path) -> None:
    x = torch.randn(4, *SHAPE)
    p = parity(model, onnx_bytes(model, SHAPE), x)
    assert p["max_abs_diff"] < 1e-4 and p["top1_agreement"] == 1.0
    dp.save_checkpoint(tmp_path / "ck", model, spec)
    back, _, _ = dp.load_checkpoint(tmp_path / "ck", trust_code=True)  # the class file it carries
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))
    left = {s["layer"]: s["reason"] for s in report.plan.skipped}
    assert set(left) == set(LEFT_WHOLE[name])
    for layer, why in LEFT_WHOLE[name].items():
        assert why in left[layer] and "left whole" in left[layer]


@pytest.mark.parametrize("goal", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("name", list(ARCHS))
def test_a_macs_target_is_met_or_refused_in_one_line(name, goal, tmp_path):
    if goal > REACH.get(name, float("inf")):
        with pytest.raises(DistillpruneError) as err:
            run(name, {"macs_ratio": goal}, tmp_path)
        msg = str(err.value)
        assert "\n" not in msg and f"the cuttable layers cannot reach the target MACs ratio {goal:g}x" in msg
        assert float(msg.split("the best plan is ")[1].split("x")[0]) == pytest.approx(REACH[name], abs=0.05)
        return
    model, spec, report = run(name, {"macs_ratio": goal}, tmp_path)
    assert goal <= report.plan.achieved <= goal * (1 + TOL)
    check(model, spec, report, name, tmp_path)
    if name == "vit":
        assert_heads_cut(model, report)


def assert_heads_cut(model, report) -> None:
    """Whole heads went: each attention left runs ``num_heads`` heads of 8 (``attn_dim`` lowered with them), and
    the plan cut at least one."""
    # (an attention the plan removed whole, as a residual branch, is an Identity: it runs no head)
    attentions = [b.attn for b in model.blocks if hasattr(b, "attn") and not isinstance(b.attn, torch.nn.Identity)]
    for a in attentions:
        assert a.head_dim == 8 and a.attn_dim == 8 * a.num_heads
        assert (a.qkv.out_features, a.proj.in_features) == (3 * a.attn_dim, a.attn_dim)
    assert sum(a.num_heads for a in attentions) < 4 * len(attentions)
    assert any(kept < size for root, (kept, size) in report.plan.widths.items() if root.endswith("attn.qkv"))


def test_an_attention_whose_head_count_cannot_be_read_is_left_whole_and_named(tmp_path):
    model, spec, report = run("vit_unread", {"macs_ratio": 1.5}, tmp_path)
    assert 1.5 <= report.plan.achieved <= 1.5 * (1 + TOL)
    for b in model.blocks:
        if hasattr(b, "attn"):
            assert (b.attn.qkv.out_features, b.attn.proj.in_features) == (96, 32)
    check(model, spec, report, "vit_unread", tmp_path)


def test_a_target_beyond_the_shared_and_raw_layers_is_one_line(tmp_path):
    with pytest.raises(DistillpruneError, match="cannot reach the target MACs ratio 4x; the best plan is 3.47x"):
        run("raw_shared", {"macs_ratio": 4.0}, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("goal", [1.5, 2.0])
@pytest.mark.parametrize("name", list(ARCHS))
def test_a_latency_target_plans_or_refuses(name, goal, tmp_path):
    """Measured ORT speedups on a shared CPU: the band is checked by the planner itself; here, no internal error,
    and a plan that is taken runs, exports with parity and reloads."""
    try:
        model, spec, report = run(name, {"latency_speedup": goal}, tmp_path)
    except DistillpruneError as e:
        assert "\n" not in str(e) and "cannot reach" in str(e)
        return
    assert report.plan.speedup is not None and report.plan.speedup > 1.0
    check(model, spec, report, name, tmp_path)
