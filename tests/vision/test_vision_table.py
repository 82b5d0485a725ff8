"""bench/vision_table.py cannot rot: its --quick mode (one torchvision model, generated CIFAR-shaped data) runs
the dense, distillprune and Torch-Pruning rows, appends them to rows.jsonl, and --table renders them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distillprune.core.extras import ExtraMissing, import_extra

try:
    import_extra("torchvision", "vision", "the vision table")
    import_extra("timm", "vision", "the vision table")
except (ExtraMissing, RuntimeError) as e:
    pytest.skip(str(e), allow_module_level=True)

pytestmark = [pytest.mark.vision, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PYTHONWARNINGS": "ignore",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
}


def test_quick_rows_are_appended_and_rendered(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "tiny.npz",
        x_train=rng.integers(0, 255, (128, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, 128),
        x_test=rng.integers(0, 255, (64, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, 64),
    )
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "bench" / "vision_table.py"), "--out", str(out)]
    quick = ["--quick", "--source", "npz", "--data", str(tmp_path / "tiny.npz"), "--models", "resnet18"]
    res = subprocess.run(cmd + quick, capture_output=True, text=True, timeout=900, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(ln) for ln in (out / "rows.jsonl").read_text().splitlines()]
    keys = [r["row"] for r in rows]
    dense, dp_row = rows[1:3]
    assert keys[:3] == ["setup", "dense", "dp_2x"] and dense["top1"] >= 0 and "bs1" in dense["latency"]
    if "error" in dp_row:  # quick timings are noise: a plan that misses the band is a row without a result
        assert keys == ["setup", "dense", "dp_2x"] and "target speedup" in dp_row["error"]
    else:
        assert keys == ["setup", "dense", "dp_2x", "tp_l2_r8"] and dense["macs"] > dp_row["macs"]
        assert rows[3]["macs"] <= dp_row["macs"]  # Torch-Pruning cut to at least the dp row's MAC reduction
    assert (out / "resnet18" / "dense" / "model.json").is_file()

    again = subprocess.run(cmd + quick, capture_output=True, text=True, timeout=900, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    again = [json.loads(ln)["row"] for ln in (out / "rows.jsonl").read_text().splitlines()]
    assert again == [*keys, "setup"]  # finished rows (a row without a result too) are not redone

    table = subprocess.run(cmd + ["--table"], capture_output=True, text=True, timeout=120, env=ENV)
    assert table.returncode == 0, table.stderr[-3000:]
    lines = [ln for ln in table.stdout.splitlines() if ln.startswith("| torchvision resnet18")]
    assert len(lines) == len(set(keys)) - 1 - ("error" in dp_row) and "Device:" in table.stdout
