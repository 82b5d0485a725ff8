"""bench/depthwise.py (a depthwise net of a user's own at a 2x target, issue 31) and the encoder rows of
bench/minilm_recovery.py cannot rot: their data, recipes and tables are checked here, and the depthwise bench's
--smoke mode runs end to end (no speed is asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import depthwise as bench  # noqa: E402
import depthwise_net  # noqa: E402

from distillprune.prune.depth import removable_blocks  # noqa: E402
from distillprune.recipes.schema import Recipe  # noqa: E402

TRAINING_KEYS = ("optimizer", "schedule", "keep_best", "batchnorm")


def test_digits32_is_seeded_and_shaped_for_the_npz_source(tmp_path: Path):
    a = bench.write_digits32(tmp_path / "a.npz")
    b = bench.write_digits32(tmp_path / "b.npz")
    da, db = np.load(a), np.load(b)
    assert da["x_train"].shape == (1437, 1, 32, 32) and da["x_test"].shape == (360, 1, 32, 32)
    assert da["x_train"].dtype == np.uint8 and da["x_train"].max() > 200
    assert sorted(set(da["y_test"].tolist())) == list(range(10))
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(da[k], db[k])


def test_the_users_net_has_identity_residuals_the_library_finds():
    net = depthwise_net.DepthwiseNet()
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert len(removable_blocks(net)) == sum(b.use_res for b in net.features)  # type: ignore[union-attr]
    assert sum(b.use_res for b in net.features) == 7  # type: ignore[union-attr]
    depthwise = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
    assert len(depthwise) == 11


def test_rows_are_valid_recipes_and_the_regime_row_leaves_training_to_the_library(tmp_path: Path):
    a = bench.parse(["--out", str(tmp_path)])
    for row in bench.ROWS:
        Recipe.model_validate(bench.row_recipe(a, tmp_path / "d.npz", tmp_path / "w.safetensors", row))
    prune, finetune = bench.row_recipe(a, tmp_path / "d.npz", tmp_path / "w.safetensors", "regime")["stages"]
    assert prune["target"] == {"latency_speedup": 2.0} and prune["epochs_per_step"] == 1
    assert finetune == {"type": "finetune", "epochs": 1}
    assert not any(k in prune for k in TRAINING_KEYS)
    old = bench.row_recipe(a, tmp_path / "d.npz", tmp_path / "w.safetensors", "before31")["stages"]
    assert old[0]["optimizer"] == {"lr": 0.02} and old[1]["optimizer"] == {"lr": 0.01}
    for st in old:
        assert st["schedule"] == {"name": "onecycle"} and st["keep_best"] == {"enabled": False}
        assert st["batchnorm"] == {"renormalize": False}
    with pytest.raises(SystemExit):
        bench.parse(["--rows", "regime,nope"])


def test_table_renders_the_curves_and_marks_the_kept_point():
    checks = [{"step": 0, "val_top1": 97.0}, {"step": 5, "val_top1": 98.0}, {"step": 10, "val_top1": 96.0}]
    lat = {"speedup": 2.1, "speedup_min": 2.0, "speedup_max": 2.2, "load1": 3.0}
    results = {
        "dense": {"top1": 98.5, "epochs": 60},
        "regime": {
            "removed_blocks": ["features.2", "features.4"],
            "est_top1": 97.5,
            "e0": 96.0,
            "after_prune_epoch": 97.0,
            "after_finetune": 97.5,
            "macs_ratio": 2.0,
            "latency": {"bs1": lat, "bs32": lat},
            "prune_curve": {"checks": checks, "kept": checks[1]},
            "finetune_curve": {},
        },
    }
    text = bench.table(results)
    assert "| regime | 2 | 97.50 | 96.00 | 97.00 | **97.50** | -1.00 pp | 2.10x (2.00-2.20) |" in text
    assert "| regime | prune step | 97.0 **98.0** 96.0 |" in text
    assert "| regime | finetune | - (no held-out checks) |" in text


def test_minilm_rows_are_valid_configs():
    import minilm_recovery

    a = minilm_recovery.parse([])
    for row in minilm_recovery.ROWS:
        cfg = minilm_recovery.prune_config(a, row)
        assert (cfg.target is None) == row.startswith("fixed")
    regime = minilm_recovery.prune_config(a, "t2x")
    assert (
        regime.schedule is None
        and regime.keep_best.enabled is None
        and regime.recovery is not None
        and regime.recovery.method == "lstsq"
    )
    assert regime.target is not None and regime.target.latency_speedup == 2.0
    old = minilm_recovery.prune_config(a, "t2x_before31")
    assert old.schedule is not None and old.schedule.name == "onecycle" and old.keep_best.enabled is False


@pytest.mark.slow
def test_depthwise_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert bench.main(["--smoke", "--out", str(tmp_path), "--rows", "regime"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    row = results["regime"]
    for key in ("e0", "after_prune_epoch", "after_finetune", "est_top1"):
        assert row[key] is not None and 0 <= row[key] <= 100
    # the regime's held-out checks ran in both trainings, the start first, and one of them was kept
    for key in ("prune_curve", "finetune_curve"):
        checks = row[key]["checks"]
        assert checks[0]["step"] == 0 and len(checks) >= 2 and row[key]["kept"] in checks
    assert row["finetune_start"] == pytest.approx(row["after_prune_epoch"], abs=0.01)
    assert row["latency"]["bs1"]["speedup"] > 0
    assert "| regime |" in capsys.readouterr().out
