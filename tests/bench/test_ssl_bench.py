"""The label-free compression benchmark runs (``--source digits --quick``: the embedded digits, one epoch,
one depth option), so the script cannot rot: every row, the probes and the paired speedups are filled in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ssl_bench_quick(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "self_supervised.py"),
            "--source",
            "digits",
            "--quick",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| network | kNN top-1 %") and len(lines) == 1 + 6  # header, 6 networks
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("random", "dense", "pruned", "a", "b", "c"):
        assert 0 <= results[key]["metrics"]["knn_top1"] <= 100 and 0 <= results[key]["metrics"]["linear_top1"] <= 100
    for key in ("pruned", "a", "b", "c"):
        assert results[key]["speed"]["bs1"]["speedup"] > 1  # pruned to a measured 2x (loaded machine: > 1)
        assert results[key]["macs"] < results["dense"]["macs"]
    assert (tmp_path / "table.md").read_text().count("\n| ") == 6  # the rows under the header
