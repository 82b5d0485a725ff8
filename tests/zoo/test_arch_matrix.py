"""The generality matrix of the latency-target feature: each architecture of ``arch_nets`` (depthwise, LayerNorm
through permutes, hand-written attention, raw parameters and a shared conv, SE, concat) under a target. Either
the plan lands in the band -- then the pruned model runs, its ONNX export agrees with PyTorch, the checkpoint
reloads through ``load_checkpoint``, and the report names every group left whole -- or one line says the
cuttable layers cannot reach the target. Never an internal error.

MACs targets keep the fast tests deterministic on a loaded CPU; the ``slow`` test runs each architecture under
a measured latency target."""

from __future__ import annotations

import arch_nets
import pytest
import torch
from arch_nets import ARCHS

import distillprune as dp
from distillprune.errors import DistillpruneError
from distillprune.export.onnx import onnx_bytes, parity

SHAPE = (3, 16, 16)
TOL = 0.25  # the planner's default band: [target, target * 1.25]

#: the groups each architecture leaves whole (by root layer) and what the reason must say
LEFT_WHOLE = {
    "mobilenet_v2": {},
    "convnext": {},
    "vit": {  # the heads (no head count given to Torch-Pruning), and the embedding width the attention reshapes
        "blocks.0.attn.qkv": "head channels of the attention `blocks.0.attn` (num_heads=4)",
        "blocks.1.attn.qkv": "head channels of the attention `blocks.1.attn` (num_heads=4)",
        "blocks.0.mlp.2": "the model no longer runs",  # (the root of that group once blocks.1 is removed)
        "blocks.1.mlp.2": "the model no longer runs",
    },
    "raw_shared": {"mid.0": "raw parameter `raw_w` (32, 16, 3, 3)"},
    "se_resnet": {},
    "densenet": {},
    "resnext": {},
}
#: the MACs ratio each reaches at most (measured, default width.max_ratio, depth 0 or half the blocks): above it
#: the target is refused in one line naming this best plan
REACH = {"vit": 2.82, "raw_shared": 3.47}


def build(name: str):
    torch.manual_seed(0)
    model, spec = dp.make_model({"python": f"{arch_nets.__file__}:{ARCHS[name].__name__}"}, 10, SHAPE)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval(), spec


def run(name: str, target: dict, tmp_path):
    model, spec = build(name)
    cfg = {"width": {"round_to": 4}, "target": {**target, "depth_fractions": [0.0, 0.5], "refits": 1}}
    x = torch.randn(16, *SHAPE)
    return model, spec, dp.prune_(model, cfg, x, 10, spec=spec)


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


def test_a_target_beyond_the_shared_and_raw_layers_is_one_line(tmp_path):
    with pytest.raises(DistillpruneError, match="cannot reach the target MACs ratio 4x; the best plan is 3.47x"):
        run("raw_shared", {"macs_ratio": 4.0}, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHS))
def test_a_latency_target_plans_or_refuses(name, tmp_path):
    """Measured ORT speedups on a shared CPU: the band is checked by the planner itself; here, no internal error,
    and a plan that is taken runs, exports with parity and reloads."""
    try:
        model, spec, report = run(name, {"latency_speedup": 1.5}, tmp_path)
    except DistillpruneError as e:
        assert "\n" not in str(e) and "cannot reach" in str(e)
        return
    assert report.plan.speedup is not None and report.plan.speedup > 1.0
    check(model, spec, report, name, tmp_path)
