"""bench/plan_speed.py cannot rot: its --quick mode plans a tiny random ResNet twice (a cold and a warm latency
cache) and times each plan with the benchmark's own pairs. No wall-clock limit and no speed assertion: a loaded
machine only makes it slower."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_plan_speed_quick(tmp_path: Path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(ROOT / "bench" / "plan_speed.py"), "--quick", "--quiet", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT / "bench")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| 1.5x | cold |" in res.stdout and "| 1.5x | warm (second plan) |" in res.stdout
    assert "machine:" in res.stdout and "command:" in res.stdout
    cold, warm = json.loads((out / "results.json").read_text())["rows"]
    assert cold["plan_s"] > 0 and warm["plan_s"] > 0
    assert cold["entries_timed"] > 0 and cold["entries_cached"] == 0  # the cache folder was emptied first
    assert warm["entries_cached"] > 0  # the second plan reads what the first timed
    assert cold["timed"] >= 1 and len(cold["bench_spread"]) == 2 and "plan" in cold
    assert not list(out.glob("cache/latency/.*"))  # no temporary file left behind
