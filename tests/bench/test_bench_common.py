"""bench/_common.py: side-by-side latency, merged results, tables rendered from the JSON."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _common as common  # noqa: E402

from distillprune.measure.latency import LatencyConfig  # noqa: E402
from distillprune.models import build_model  # noqa: E402

TINY = LatencyConfig(warmup=1, repeats=1, min_window_s=0.005)


def test_side_by_side_times_pairs_and_reports_the_spread():
    torch.manual_seed(0)
    big = build_model("resnet", 10, (3, 16, 16), widths=[16, 32, 64], blocks=[2, 2, 2])
    small = build_model("resnet", 10, (3, 16, 16), widths=[8, 8, 16], blocks=[1, 1, 1])
    lat = common.side_by_side(
        common.onnx_of(small, (3, 16, 16)),
        common.onnx_of(big, (3, 16, 16)),
        (3, 16, 16),
        batch_sizes=(1, 4),
        pairs=3,
        cfg=TINY,
    )
    assert set(lat) == {"bs1", "bs4"}
    for d in lat.values():
        assert d["pairs"] == 3
        assert d["ms_min"] <= d["ms"] <= d["ms_max"] and d["ref_ms_min"] <= d["ref_ms"] <= d["ref_ms_max"]
        assert d["speedup_min"] <= d["speedup"] <= d["speedup_max"]
    assert lat["bs4"]["speedup"] > 1.0  # ~20x fewer MACs: faster even on a busy machine
    with pytest.raises(ValueError, match="pairs"):
        common.side_by_side(b"", b"", (3, 16, 16), pairs=0)


def test_results_merge_by_row_and_seed(tmp_path):
    path = tmp_path / "r.json"
    res = common.load_results(path)
    assert res == {}
    common.add_run(res, "dp_2x", {"top1": 90.0}, seed=0)
    common.add_run(res, "dp_2x", {"top1": 91.0}, seed=1)
    common.add_run(res, "dp_2x", {"top1": 92.0}, seed=0)  # a rerun of seed 0 replaces it
    common.save_results(path, res)
    back = common.load_results(path)
    assert [(r["seed"], r["top1"]) for r in back["dp_2x"]] == [(0, 92.0), (1, 91.0)]


def test_mean_run_and_table():
    lat = {"bs1": {"ms": 1.0, "ms_min": 0.9, "ms_max": 1.2, "speedup": 2.0, "speedup_min": 1.8, "speedup_max": 2.2}}
    lat2 = {"bs1": {"ms": 2.0, "ms_min": 1.5, "ms_max": 2.5, "speedup": 1.0, "speedup_min": 0.7, "speedup_max": 1.1}}
    m = common.mean_run([{"top1": 80.0, "macs": 10, "latency": lat}, {"top1": 82.0, "macs": 10, "latency": lat2}])
    assert m["top1"] == 81.0 and m["n"] == 2
    assert m["latency"]["bs1"] == {
        "ms": 1.5,
        "ms_min": 0.9,
        "ms_max": 2.5,
        "speedup": 1.5,
        "speedup_min": 0.7,
        "speedup_max": 2.2,
    }
    cols = [
        ("row", None),
        ("top-1", lambda r, t: f"{r['top1']:.1f}"),
        ("speedup", lambda r, t: common.fmt_spread(r["latency"]["bs1"], "speedup", ".2f", "x")),
    ]
    text = common.render_table([("a", m)], cols, m)
    assert text.splitlines() == ["| row | top-1 | speedup |", "|---|---|---|", "| a | 81.0 | 1.50x (0.70-2.20) |"]
    assert common.fmt_spread(None, "ms", ".2f") == "-"
