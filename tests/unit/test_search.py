"""Target-driven plans (``distillprune.auto.search``): the plan meets its target, keeps the most MACs it
can, and an unreachable target is a clear error."""
from __future__ import annotations

import pytest
import torch
from unit_helpers import tiny_resnet

from distillprune.errors import DistillpruneError
from distillprune.measure.metrics import count_macs
from distillprune.prune.config import TargetConfig, WidthConfig
from distillprune.prune.search import _candidate, search

SHAPE = (3, 8, 8)
WIDTH = WidthConfig(ratio=None, round_to=8)


def model() -> torch.nn.Module:
    return tiny_resnet(seed=0, widths=(16, 32, 64), blocks=(3, 3, 3)).eval()


def test_macs_plan_meets_the_target_and_reports_the_pruned_macs():
    m = model()
    plan = search(m, SHAPE, 10, WIDTH, TargetConfig(macs_ratio=2.0))
    assert plan.blocks == 0 and 0 < plan.width_ratio <= 0.75
    pruned = _candidate(m, SHAPE, 10, plan.blocks, plan.width_ratio, WIDTH)
    assert plan.macs_ratio == pytest.approx(count_macs(m, SHAPE) / count_macs(pruned, SHAPE))
    assert plan.macs_ratio >= 2.0
    # the search bisects to the narrowest cut that meets the target: a slightly smaller ratio misses it
    less = _candidate(m, SHAPE, 10, 0, plan.width_ratio * 0.9, WIDTH)
    assert count_macs(m, SHAPE) / count_macs(less, SHAPE) < 2.0


def test_depth_options_keep_more_macs_and_land_closer_to_the_target():
    m = model()
    width_only = search(m, SHAPE, 10, WIDTH, TargetConfig(macs_ratio=3.0))
    both = search(m, SHAPE, 10, WIDTH, TargetConfig(macs_ratio=3.0, depth_fractions=[0.0, 0.25, 0.5]))
    assert 3.0 <= both.macs_ratio <= width_only.macs_ratio
    assert both.macs_ratio < 3.5  # the depth options let the width search land within ~15% of the target


def test_latency_plan_is_measured_faster():
    plan = search(model(), SHAPE, 10, WIDTH, TargetConfig(latency_speedup=1.2, depth_fractions=[0.0, 0.3]))
    assert plan.speedup is not None and plan.speedup >= 1.2
    assert plan.macs_ratio > 1.2


def test_an_unreachable_target_is_a_clear_error():
    with pytest.raises(DistillpruneError, match="no plan reaches the target"):
        search(model(), SHAPE, 10, WIDTH, TargetConfig(macs_ratio=500.0, max_width_ratio=0.5))


def test_an_unpruned_candidate_is_not_faster_than_itself():
    # timing noise once let the dense copy pass a 1.2x latency target: nothing removed means speedup 1
    import copy

    from distillprune.measure.latency import LatencyConfig
    from distillprune.prune.search import _Scorer

    m = model()
    scorer = _Scorer(m, SHAPE, TargetConfig(latency_speedup=1.05), LatencyConfig(repeats=1, min_window_s=0.001))
    assert scorer.score(copy.deepcopy(m)) == (1.0, 1.0, False)
