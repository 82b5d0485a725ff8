"""Predict, then confirm (issue 32): the planner prices candidates with the latency table, estimates them without
least squares unless ``plan_recovery`` is set, says what it does on the console, skips depth options past the
band, and shares plans whose inputs are equal."""

from __future__ import annotations

import copy

import pytest
import torch
from unit_helpers import random_bundle, randomise_bn, tiny_resnet

import distillprune as dp
from distillprune.core.progress import talking
from distillprune.export.onnx import onnx_bytes
from distillprune.measure.latency import LatencyConfig
from distillprune.pipeline.stages.prune import plan_flags
from distillprune.prune import planner as planner_module
from distillprune.prune.channels import enumerate_groups
from distillprune.prune.config import WidthConfig
from distillprune.prune.depth import removable_blocks, remove_blocks
from distillprune.prune.groups import apply_widths
from distillprune.prune.latency_table import LatencyTable, layer_shapes
from distillprune.prune.plan_store import shared_plans
from distillprune.prune.predict import LatencyPricing
from distillprune.train.config import RuntimeConfig
from distillprune.train.context import Context, LoaderOptions

SHAPE = (3, 8, 8)
FAST = LatencyConfig(batch_sizes=[1], warmup=1, repeats=2, min_window_s=0.005, pairs=3)


def model(blocks=(3, 3, 3)) -> torch.nn.Module:
    return randomise_bn(tiny_resnet(seed=0, widths=(16, 32, 64), blocks=blocks)).eval()


def session(target: dict, progress: bool = False, **width):
    data = random_bundle(n_train=400, n_test=40, shape=SHAPE)
    conf = dp.PruneConfig.model_validate(
        {"width": {"round_to": 8, **width}, "target": {"val_samples": 64, "calib_samples": 64, **target}}
    )
    context = Context(RuntimeConfig(progress=progress, tensorboard=False), LoaderOptions(32, 0), FAST)
    return dp.PruneSession(model(), conf, data=data, context=context)


def test_candidates_are_estimated_without_least_squares_unless_plan_recovery(monkeypatch):
    calls = []
    real = planner_module.recover_
    monkeypatch.setattr(planner_module, "recover_", lambda *a, **k: calls.append(1) or real(*a, **k))
    target = {"macs_ratio": 2.0, "depth_fractions": [0.0, 0.25]}
    s = session(target)
    report = s.run()
    assert calls == [] and len(report.plan.candidates) >= 2  # no candidate was recovered...
    assert len(report.recovery) == 1 and report.recovery[0].accepted  # ...the chosen plan was, once, by the session
    s = session({**target, "plan_recovery": True})
    plan = s.prepare()
    assert len(calls) == len(plan.candidates)  # every candidate compared after recovery


def test_the_planner_says_each_candidate_on_the_console_with_its_time_and_what_is_left(capsys):
    s = session({"macs_ratio": 2.0, "depth_fractions": [0.0, 0.25]}, progress=True)
    said: list[str] = []
    with talking("2:prune", first_after=0.0, every=1e9, write=said.append):  # as the pipeline runs a stage
        plan = s.prepare()
    lines = [ln.split("  ", 1)[1] for ln in said if ln.startswith("2:prune  [plan ")]
    assert any("predicted 1/2" in ln and "1 depth option(s) to go" in ln for ln in lines)
    assert any("predicted 2/2" in ln for ln in lines)
    assert lines[-1].split("] ", 1)[1].startswith("plan: ") and "in the band" in lines[-1]
    assert all(" s] " in ln for ln in lines)  # the elapsed time
    assert plan.candidates and all(c.predicted is not None for c in plan.candidates)
    quiet = session({"macs_ratio": 2.0, "depth_fractions": [0.0]})
    quiet.prepare()
    assert "[plan " not in capsys.readouterr().out  # a run that does not talk prints nothing


def test_depth_options_past_the_band_are_not_planned_and_width_fills_the_gap():
    s = session({"macs_ratio": 1.3, "depth_fractions": [0.0, 0.5, 0.75]})
    plan = s.prepare()
    depths = sorted({c.blocks for c in plan.candidates})
    assert depths == [0, 4]  # 4 of 8 blocks alone overshoot 1.3x: the option of 6 is not planned
    assert any("not planned (width fills the gap)" in line for line in s.report.log)
    chosen = next(c for c in plan.candidates if c.chosen)
    assert chosen.blocks == 0 and chosen.in_band  # reached with width at the shallower depth


def test_equal_inputs_share_one_plan_and_another_target_plans_again(tmp_path):
    with shared_plans(tmp_path / "plans"):
        first = session({"macs_ratio": 2.0, "depth_fractions": [0.0]}).prepare()
        again = session({"macs_ratio": 2.0, "depth_fractions": [0.0]}).prepare()
        other = session({"macs_ratio": 1.5, "depth_fractions": [0.0]}).prepare()
    assert not first.reused and again.reused and not other.reused
    assert (again.blocks, again.widths, again.achieved) == (first.blocks, first.widths, first.achieved)
    assert len(list((tmp_path / "plans").glob("*.json"))) == 2
    fresh = session({"macs_ratio": 2.0, "depth_fractions": [0.0]}).prepare()  # no store active: planned again
    assert not fresh.reused


def test_a_damaged_shared_plan_is_planned_again(tmp_path, caplog):
    with shared_plans(tmp_path):
        session({"macs_ratio": 2.0, "depth_fractions": [0.0]}).prepare()
        (stored,) = tmp_path.glob("*.json")
        stored.write_text("{ damaged")
        plan = session({"macs_ratio": 2.0, "depth_fractions": [0.0]}).prepare()
    assert not plan.reused and "stored cnn" in caplog.text and "ignored" in caplog.text


def test_a_plan_outside_its_band_is_a_flag_of_the_stage():
    class P:
        note = "no candidate landed inside the target band; the closest above the target was taken"
        achieved, target = 2.41, {"latency_speedup": 2.0, "batch_size": 1}

    (flag,) = plan_flags(P())
    assert flag.startswith("plan outside the target band (achieved 2.41x for a target of 2x)") and P.note in flag
    P.note = None
    assert plan_flags(P()) == [] and plan_flags(None) == []


def test_the_predicted_speedup_of_a_tiny_nets_candidates_is_close_to_the_measured_one():
    """The table's prediction against the candidates' own profile (each node's fastest run: a statistic that a
    loaded machine keeps, see prune.latency_probe), within 20%."""
    shape = (3, 32, 32)  # 8x8 is all per-call overhead; a 32x32 net has work for the table to price
    dense = model()
    table = LatencyTable(LatencyConfig(threads=1), 1)
    pricing = LatencyPricing(table, layer_shapes(dense, shape), table.model_ms(onnx_bytes(dense, shape), shape))
    blocks = removable_blocks(dense)
    width = WidthConfig(ratio=None, round_to=8, importance="l2")
    ratios = []
    for removed, share in ((0, 0.5), (4, 1.0), (2, 0.5)):
        m = copy.deepcopy(dense)
        remove_blocks(m, blocks[:removed])
        groups = enumerate_groups(m, torch.zeros(1, *shape), width, 10).groups
        keep = {g.root: max(g.min_keep, int(g.size * share) // 8 * 8) for g in groups}
        apply_widths(m, torch.zeros(1, *shape), width, 10, keep, onnx=False)
        predicted = pricing.ratio(layer_shapes(m, shape))
        measured = pricing.dense / table.model_ms(onnx_bytes(m, shape), shape)
        ratios.append(predicted / measured)
        assert measured > 1.3  # (a real speedup to predict)
    assert all(0.8 < r < 1.2 for r in ratios), ratios


@pytest.mark.slow
def test_timed_candidates_record_their_predicted_and_measured_speedup():
    data = random_bundle(n_train=400, n_test=40, shape=(3, 32, 32))
    conf = dp.PruneConfig.model_validate(
        {
            "width": {"round_to": 8},
            "target": {"latency_speedup": 1.5, "depth_fractions": [0.0, 0.25], "val_samples": 64, "calib_samples": 64},
        }
    )
    lat = LatencyConfig(batch_sizes=[1], warmup=2, repeats=3, min_window_s=0.02, pairs=5)
    s = dp.PruneSession(model(), conf, data=data, context=Context(loader=LoaderOptions(32, 0), latency=lat))
    plan = s.prepare()
    timed = [c for c in plan.candidates if c.speedup is not None]
    assert timed and plan.timed == len(timed) and any(c.chosen for c in timed)
    assert all(c.predicted is not None and c.prediction_error is not None for c in timed)
    # a loaded machine's pairs are noisy (and favour the smaller model): a loose band around the prediction
    assert all(-0.5 < c.prediction_error < 1.0 for c in timed), [(c.predicted, c.speedup) for c in timed]
    assert all(c.speedup is None and c.latency_ms == {} for c in plan.candidates if c not in timed)
    assert plan.lut_entries + plan.lut_cached > 0


def test_a_second_plan_of_the_same_model_reads_its_block_order_from_the_cache(tmp_path):
    cache = {"latency_cache": str(tmp_path), "depth_fractions": [0.0, 0.25]}
    first = session({"macs_ratio": 2.0, **cache})
    first.prepare()
    second = session({"macs_ratio": 1.5, **cache})
    second.prepare()
    assert any("evaluations on" in line for line in first.report.log)
    assert any("scored before on these images" in line for line in second.report.log)
    assert len(list((tmp_path / "blocks").glob("*.json"))) == 1
    off = session({"macs_ratio": 1.5, **cache, "latency_cache": False})
    off.prepare()  # no cache: scored again
    assert any("evaluations on" in line for line in off.report.log)
