"""The CIFAR-10 benchmark script cannot rot: its --smoke mode runs on a generated cifar-like .npz.

Load-proof: small data, no wall-clock limit (a loaded CI machine is slower, not wrong) and no speed asserted (the
smoke's latency-target row aims at a band any machine's timing lands in)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cifar_bench_smoke(tmp_path: Path):
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(
        data,
        x_train=rng.integers(0, 255, (128, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, 128),
        x_test=rng.integers(0, 255, (64, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, 64),
    )
    out = tmp_path / "out"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "cifar10_resnet56.py"),
            "--smoke",
            "--source",
            "npz",
            "--data",
            str(data),
            "--out",
            str(out),
            "--rows",
            "small_kd,tp_kd,dp_3x,dp_speed3x,throughput",
            "--depth-fractions",
            "0",
            "0.5",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert {"teacher", "small_kd", "tp_kd", "dp_3x", "dp_speed3x"} <= set(results)
    teacher_macs = results["teacher"]["macs"]
    # every compressed row is really smaller than the teacher, and the table has one line per row
    for row in ("small_kd", "tp_kd", "dp_3x", "dp_speed3x"):
        assert results[row][0]["macs"] < teacher_macs
    assert res.stdout.count("\n| ") >= 5
    assert "| dp_speed3x |" in res.stdout
    tp = results["throughput"]
    assert tp["plain_img_s"] > 0 and tp["dp_kd_img_s"] > 0 and "Trainer throughput" in res.stdout
    # a partial run adds its rows to the earlier results instead of dropping them
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "cifar10_resnet56.py"),
            "--smoke",
            "--source",
            "npz",
            "--data",
            str(data),
            "--out",
            str(out),
            "--rows",
            "small_scratch",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    merged = json.loads((out / "results.json").read_text())
    assert {"small_scratch", "small_kd", "dp_speed3x", "throughput"} <= set(merged)
