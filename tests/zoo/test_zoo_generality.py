"""Any graph a user brings: each hand-written net of ``zoo_nets`` is width-pruned and depth-pruned (or skipped
with a stated reason), still runs, exports to ONNX with parity, has fewer MACs, and comes back from its
checkpoint (built from its file with ``model.python``, so ``load_checkpoint(trust_code=True)`` needs no ``base=``)."""

from __future__ import annotations

import pytest
import torch
import zoo_nets
from zoo_nets import RESIDUALS, ZOO

import distillprune as dp
from distillprune.errors import DistillpruneError
from distillprune.export.onnx import onnx_bytes, parity
from distillprune.measure.metrics import count_macs
from distillprune.prune.depth import removable_blocks

SHAPE = (3, 16, 16)


def build(name: str):
    torch.manual_seed(0)
    model, spec = dp.make_model({"python": f"{zoo_nets.__file__}:{ZOO[name].__name__}"}, 10, SHAPE)
    for m in model.modules():  # non-trivial BN statistics, so parity and replay compare real numbers
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval(), spec


def check_result(model, spec, macs_before: int, tmp_path) -> None:
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert model(x).shape == (4, 10)
    assert count_macs(model, SHAPE) < macs_before
    p = parity(model, onnx_bytes(model, SHAPE), x)
    assert p["max_abs_diff"] < 1e-4 and p["top1_agreement"] == 1.0
    dp.save_checkpoint(tmp_path / "ck", model, spec)
    back, _, _ = dp.load_checkpoint(tmp_path / "ck", trust_code=True)  # the class file the folder carries
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))


@pytest.mark.parametrize("name", list(ZOO))
def test_width_pruning_cuts_or_says_why(name, tmp_path):
    model, spec = build(name)
    before = count_macs(model, SHAPE)
    report = dp.prune_(
        model, {"width": {"ratio": 0.5, "round_to": 4}}, dp.Examples(torch.zeros(1, *SHAPE), 10), history=spec
    )
    assert report.channels_removed
    if name == "concat_grouped":  # the pattern Torch-Pruning cuts wrongly: skipped before cutting, with the reason
        assert {s["layer"] for s in report.skipped} == {"a.0", "b.0"}
        assert all("concat feeding a grouped conv at `g.0`" in s["reason"] for s in report.skipped)
        assert model.a[0].out_channels == 16 and model.b[0].out_channels == 16
    elif name == "mlp_mixer":  # token mixing (a Linear across transposed tokens): Torch-Pruning fails scoring the
        # embedding-width group; the enumerator leaves it whole with the error, the rest is pruned
        assert [s["layer"] for s in report.skipped] == ["blocks.1.mlp.2"]
        assert "Torch-Pruning cannot score it (IndexError" in report.skipped[0]["reason"]
        assert model.embed.out_channels == 32 and model.blocks[0].mlp[0].out_features < 64
    else:
        assert report.skipped == []
    check_result(model, spec, before, tmp_path)


@pytest.mark.parametrize("name", list(ZOO))
def test_depth_pruning_finds_residuals_in_the_graph(name, tmp_path):
    model, spec = build(name)
    assert removable_blocks(model) == RESIDUALS[name]
    cfg = {"depth": {"blocks": 1}}
    if not RESIDUALS[name]:
        with pytest.raises(DistillpruneError, match="no identity residual y = x \\+ f\\(x\\) found"):
            dp.prune_(model, cfg, dp.Examples(torch.randn(8, *SHAPE), 10), history=spec)
        return
    before = count_macs(model, SHAPE)
    report = dp.prune_(model, cfg, dp.Examples(torch.randn(8, *SHAPE), 10), history=spec)
    assert len(report.removed_blocks) == 1 and report.removed_blocks[0] in RESIDUALS[name]
    assert report.removed_blocks[0] not in removable_blocks(model)
    check_result(model, spec, before, tmp_path)


def test_a_group_that_fails_inside_torch_pruning_is_skipped_and_reported(monkeypatch):
    """Without the enumerator's pre-check, Torch-Pruning cuts the concat-into-grouped-conv group wrongly: the
    cutter rolls that group back, names it with what broke, and cuts the rest."""
    import distillprune.prune.channels as channels

    monkeypatch.setattr(channels, "joined_into_grouped", lambda group, names: None)  # the pre-check off
    model, _ = build("concat_grouped")
    report = dp.prune_(model, {"width": {"ratio": 0.5, "round_to": 4}}, dp.Examples(torch.zeros(1, *SHAPE), 10))
    [op] = report.history
    assert op.entries and all(name != "a.0" for name, _, _ in op.entries)
    reasons = {s["layer"]: s["reason"] for s in report.skipped}
    assert "a.0" in reasons and set(reasons) <= {"a.0", "b.0"}
    assert all(
        r.startswith(f"cutting {layer} + ") and ("Torch-Pruning failed on it" in r or "no longer runs" in r)
        for layer, r in reasons.items()
    ), reasons
    assert model.a[0].out_channels == 16 and model.block[0][0].out_channels < 32  # the rest was cut
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)


def test_a_step_that_fails_midway_restores_the_model_exactly():
    """All or nothing: when building the step's groups fails after some were cut, the cutter restores the model
    (weights, sizes, the dependency graph's history) and the error reaches the caller."""
    from distillprune.prune.channels import enumerate_groups
    from distillprune.prune.config import WidthConfig
    from distillprune.prune.cut import Cutter

    model, _ = build("concat_grouped")
    x = torch.zeros(1, *SHAPE)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    found = enumerate_groups(model, x, WidthConfig(round_to=4), 10)
    dg = found.dg

    def items():
        for g in found.groups[:2]:
            root = model.get_submodule(g.root)
            yield dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, g.order[: g.step])
        raise RuntimeError("the third group could not be built")

    with pytest.raises(RuntimeError, match="third group"):
        Cutter(model, dg, x).cut(items())
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert dg.pruning_history() == [] and model(x).shape == (1, 10)


def test_a_selection_that_leaves_nothing_to_prune_is_an_error():
    model, _ = build("depthwise")
    with pytest.raises(DistillpruneError, match="leaves none of the .* prunable layer groups"):
        dp.prune_(
            model, {"width": {"ratio": 0.5, "layers": {"include": ["head"]}}}, dp.Examples(torch.zeros(1, *SHAPE), 10)
        )
