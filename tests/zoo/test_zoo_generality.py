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
from distillprune.prune.safety import WidthPruningError

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
    report = dp.prune_(model, {"width": {"ratio": 0.5, "round_to": 4}}, torch.zeros(1, *SHAPE), 10, spec=spec)
    assert report.channels_removed
    if name == "concat_grouped":  # the pattern Torch-Pruning cuts wrongly: skipped before cutting, with the reason
        assert {s["layer"] for s in report.skipped} == {"a.0", "b.0"}
        assert all("concat feeding a grouped conv at `g.0`" in s["reason"] for s in report.skipped)
        assert model.a[0].out_channels == 16 and model.b[0].out_channels == 16
    elif name == "mlp_mixer":  # token mixing (a Linear across transposed tokens): Torch-Pruning fails on the
        # embedding-width group; the step is undone, that group skipped with the error, the rest pruned
        assert [s["layer"] for s in report.skipped] == ["blocks.1.mlp.2"]
        assert "Torch-Pruning failed on it (IndexError" in report.skipped[0]["reason"]
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
            dp.prune_(model, cfg, torch.randn(8, *SHAPE), 10, spec=spec)
        return
    before = count_macs(model, SHAPE)
    report = dp.prune_(model, cfg, torch.randn(8, *SHAPE), 10, spec=spec)
    assert len(report.removed_blocks) == 1 and report.removed_blocks[0] in RESIDUALS[name]
    assert report.removed_blocks[0] not in removable_blocks(model)
    check_result(model, spec, before, tmp_path)


def _unchecked_pruner(monkeypatch, model, cutter_check: bool = True):
    import distillprune.prune.cut as cut
    import distillprune.prune.structured as structured
    from distillprune.prune.config import WidthConfig

    monkeypatch.setattr(structured, "skip_unsupported", lambda pruner, model: [])  # the pre-check off
    if not cutter_check:  # and the cutter's own check of each group: Torch-Pruning runs into the pattern
        monkeypatch.setattr(cut, "unsupported", lambda group, names: None)
    return structured.width_pruner(model, torch.zeros(1, *SHAPE), WidthConfig(ratio=0.5, round_to=4), 10)


def test_a_group_that_fails_inside_torch_pruning_is_skipped_and_reported(monkeypatch):
    """Without the pre-checks, Torch-Pruning cuts the group wrongly: the cutter rolls that group back, names it
    with what broke, and cuts the rest."""
    import distillprune.prune.structured as structured

    model, _ = build("concat_grouped")
    pruner = _unchecked_pruner(monkeypatch, model, cutter_check=False)
    entries = structured.prune_step(pruner)
    assert entries and all(name != "a.0" for name, _, _ in entries)
    reasons = {s.layer: s.reason for s in pruner.skipped}
    assert "a.0" in reasons and set(reasons) <= {"a.0", "b.0"}
    assert all(
        r.startswith(f"cutting {layer} + ") and ("Torch-Pruning failed on it" in r or "no longer runs" in r)
        for layer, r in reasons.items()
    ), reasons
    assert model.a[0].out_channels == 16 and model.block[0][0].out_channels < 32  # the rest was cut
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)


def test_width_pruning_is_all_or_nothing(monkeypatch):
    """When it may not skip (no retries), a failing step restores the model exactly and one line names the
    group, the pattern and the fix."""
    from distillprune.prune.transactional import transactional_step

    model, _ = build("concat_grouped")
    pruner = _unchecked_pruner(monkeypatch, model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WidthPruningError) as err:
        transactional_step(pruner, model, torch.zeros(1, *SHAPE), retries=0)
    msg = str(err.value)
    assert "\n" not in msg and "concat feeding a grouped conv at `g.0`" in msg and "restored" in msg
    assert "width.layers.exclude" in msg
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model(torch.zeros(1, *SHAPE)).shape == (1, 10)
    assert pruner.pruning_history() == []


def test_a_selection_that_leaves_nothing_to_prune_is_an_error():
    model, _ = build("depthwise")
    with pytest.raises(DistillpruneError, match="leaves none of the .* prunable layer groups"):
        dp.prune_(model, {"width": {"ratio": 0.5, "layers": {"include": ["head"]}}}, torch.zeros(1, *SHAPE), 10)
