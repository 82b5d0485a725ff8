"""Width pruning does what was asked or says so: a larger ratio never keeps more parameters (a property test
over models, ratios, rounding, max_ratio and global ranking), a ratio near 1 without rounding still prunes,
a ratio above max_ratio is a config error, and a request that removes nothing is an error before training."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unit_helpers import uniform_cut

from distillprune.core.config import validate
from distillprune.data.base import Examples
from distillprune.errors import DistillpruneError, RecipeError
from distillprune.models import build_model
from distillprune.prune.config import PruneConfig, WidthConfig
from distillprune.prune.session import PruneSession


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _pruned_params(model: torch.nn.Module, shape: tuple[int, ...], cfg: WidthConfig) -> int:
    m = copy.deepcopy(model)
    uniform_cut(m, cfg, torch.zeros(1, *shape))
    assert m(torch.zeros(2, *shape)).shape == (2, 10)
    return _params(m)


MODELS = st.one_of(
    st.builds(lambda h: ("mlp", (1, 4, 4), {"hidden": h}), st.lists(st.integers(1, 40), min_size=1, max_size=3)),
    st.builds(
        lambda w, b: ("resnet", (3, 8, 8), {"widths": w, "blocks": b[: len(w)]}),
        st.lists(st.integers(1, 24), min_size=1, max_size=3),
        st.lists(st.integers(1, 2), min_size=3, max_size=3),
    ),
)


RATIOS = st.one_of(st.floats(0.01, 0.99), st.sampled_from([0.5, 0.9, 0.95, 0.97, 0.99]))  # near 1: layers empty


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=MODELS,
    r1=RATIOS,
    r2=RATIOS,
    round_to=st.sampled_from([None, None, 1, 2, 4, 8]),
    max_ratio=st.sampled_from([0.5, 0.9, 1.0, 1.0]),
    global_pruning=st.booleans(),
    seed=st.integers(0, 3),
)
def test_pruning_is_monotonic_in_the_ratio(spec, r1, r2, round_to, max_ratio, global_pruning, seed):
    name, shape, kwargs = spec
    lo, hi = sorted((min(r1, max_ratio), min(r2, max_ratio)))
    torch.manual_seed(seed)
    model = build_model(name, 10, shape, **kwargs).eval()
    cfg = {"round_to": round_to, "max_ratio": max_ratio, "global_pruning": global_pruning}
    kept_lo = _pruned_params(model, shape, WidthConfig(ratio=lo, **cfg))
    kept_hi = _pruned_params(model, shape, WidthConfig(ratio=hi, **cfg))
    assert kept_hi <= kept_lo <= _params(model), (lo, hi, kept_lo, kept_hi)


@pytest.mark.parametrize("ratio", [0.9, 0.95, 0.99])
def test_a_ratio_near_one_without_rounding_prunes(ratio):
    # Torch-Pruning skips a layer that the ratio would empty: 0.99 of 16 channels once removed nothing
    torch.manual_seed(0)
    model = build_model("mlp", 10, (1, 4, 4), hidden=[16, 16])
    kept = _pruned_params(model, (1, 4, 4), WidthConfig(ratio=ratio, round_to=None, max_ratio=1.0))
    assert kept < _params(model) / 4
    m = copy.deepcopy(model)
    uniform_cut(m, WidthConfig(ratio=ratio, round_to=None, max_ratio=1.0), torch.zeros(1, 1, 4, 4))
    assert all(layer.out_features >= 1 for layer in m.modules() if isinstance(layer, torch.nn.Linear))


def test_ratio_above_max_ratio_is_a_config_error():
    with pytest.raises(RecipeError, match="ratio 0.95 is above max_ratio 0.9"):
        validate(WidthConfig, {"ratio": 0.95})
    assert validate(WidthConfig, {"ratio": 0.95, "max_ratio": 1.0}).ratio == 0.95


def test_a_width_request_that_removes_nothing_is_an_error():
    torch.manual_seed(0)
    model = build_model("mlp", 10, (1, 4, 4), hidden=[16])
    cfg = PruneConfig(width={"ratio": 0.02, "round_to": 8}, distill=None)
    with pytest.raises(DistillpruneError, match="removes no channel"):
        PruneSession(model, cfg, Examples(torch.zeros(1, 1, 4, 4), 10)).run()
