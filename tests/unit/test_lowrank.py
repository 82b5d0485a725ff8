"""Low-rank factorization: exact at full rank, Eckart-Young at lower rank, ranks rounded, layers that would
not save MACs skipped with a reason, and the history op rebuilds a factorized checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compress_helpers import trained
from torch import nn

import distillprune as dp
from distillprune.errors import CompressionError, RecipeError
from distillprune.lowrank import choose_rank, factorize, plan


def test_full_rank_factorization_is_exact():
    torch.manual_seed(0)
    lin, conv = nn.Linear(24, 16), nn.Conv2d(8, 12, 3, stride=2, padding=1)
    x, xc = torch.randn(5, 24), torch.randn(2, 8, 9, 9)
    assert torch.allclose(factorize(lin, 16)(x), lin(x), atol=1e-5)
    assert torch.allclose(factorize(conv, 12)(xc), conv(xc), atol=1e-5)
    seq = factorize(conv, 4)
    assert seq[0].kernel_size == (3, 3) and seq[0].out_channels == 4 and seq[1].kernel_size == (1, 1)


def test_truncation_error_is_the_dropped_singular_values():
    torch.manual_seed(0)
    lin = nn.Linear(32, 32, bias=False)
    s = torch.linalg.svdvals(lin.weight.detach())
    for r in (8, 16, 24):
        w_r = factorize(lin, r)(torch.eye(32)).T  # the product matrix
        err = torch.linalg.matrix_norm(lin.weight.detach() - w_r)
        assert torch.isclose(err, s[r:].norm(), rtol=1e-4)  # Eckart-Young


def test_choose_rank_by_energy_and_ratio_rounds_up_to_8():
    s = torch.tensor([10.0, 5.0, 1.0] + [0.1] * 61)
    assert choose_rank(s, 0.99, "energy", 8) == 8  # 3 values hold > 99%: rounded up to 8
    assert choose_rank(s, 0.5, "ratio", 8) == 32
    assert choose_rank(s, 0.3, "ratio", 8) == 24  # ceil(19.2)=20 -> 24
    assert choose_rank(s, 12, "energy", 8) == 16  # a fixed rank, rounded
    assert choose_rank(s[:5], 0.5, "ratio", 8) == 5  # never above the full rank


def test_plan_skips_layers_that_would_not_save_macs():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 64, 3, padding=1, groups=4),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.Flatten(),
        nn.Linear(64 * 16, 10),
    )
    plans = {p.name: p for p in plan(model, (3, 4, 4), dp.LowRankConfig(rank_by="ratio", ratio=0.25, min_saving=0.25))}
    assert "is the full rank 8" in plans["0"].skipped  # rank 2 rounds up to 8 = all of it
    assert "grouped" in plans["1"].skipped
    assert plans["2"].skipped is None and plans["2"].rank == 16 and plans["2"].macs_after < plans["2"].macs
    assert "saves only 19%" in plans["4"].skipped  # 10 outputs: rank 8 saves too little


def test_lowrank_history_rebuilds_the_checkpoint(tmp_path: Path):
    model = dp.build_model("resnet20", 10, (3, 16, 16))
    spec = dp.ArchSpec("resnet20", 10, [3, 16, 16])
    report = dp.lowrank_(
        model, {"rank_by": "ratio", "ratio": 0.5}, dp.Examples(torch.zeros(1, 3, 16, 16)), history=spec.history
    )
    assert spec.history and all(op.op == "lowrank" for op in spec.history)
    assert len(spec.history) == len(report.factorized) and all(p.skipped for p in report.skipped)
    dp.save_checkpoint(tmp_path / "ck", model, spec)
    again, spec2, _ = dp.load_checkpoint(tmp_path / "ck")
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(again(x), model.eval()(x))
    assert spec2.history == spec.history


def test_lowrank_keeps_a_trained_model_close():
    model = trained()
    x = torch.randn(16, 1, 8, 8)
    ref = model(x)
    dp.lowrank_(model, {"energy": 0.99, "round_to": 4}, dp.Examples(torch.zeros(1, 1, 8, 8)))
    assert (model(x).argmax(1) == ref.argmax(1)).float().mean() >= 0.8


def test_bad_layers_are_refused():
    model = trained()
    with pytest.raises(CompressionError, match="'bn1' is a BatchNorm2d"):
        dp.lowrank_(model, {"layers": {"include": ["bn1"]}}, dp.Examples(torch.zeros(1, 1, 8, 8)))
    with pytest.raises(CompressionError, match="no layer 'conv9'"):
        dp.lowrank_(model, {"layers": {"include": ["conv9"]}}, dp.Examples(torch.zeros(1, 1, 8, 8)))
    with pytest.raises(RecipeError, match="overrides"):
        dp.lowrank_(model, {"overrides": {"conv1": 1.5}}, dp.Examples(torch.zeros(1, 1, 8, 8)))
