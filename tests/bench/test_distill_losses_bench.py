"""The distillation-loss benchmark runs (``--smoke``: tiny subset, 1 epoch), so the script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_distill_losses_smoke(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "distill_losses.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| method | top-1 %") and len(lines) == 1 + 1 + 14  # header, teacher, 14 rows
    for name in (
        "CE only",
        "KD (",
        "FitNets",
        "AT (",
        "RKD",
        "PKT",
        "DKD",
        "DIST",
        "CRD",
        "mutual",
        "label-free",
    ):
        assert any(name in ln for ln in lines), name
    results = json.loads((tmp_path / "results.json").read_text())
    kd = results["rows"]["kd"][0]
    # no augmentation: the cached teacher gives the same student as the live one
    assert kd["cached"]["top1"] == kd["plain"]["top1"]
    assert "cached" not in results["rows"]["mutual"][0] and "cached" not in results["rows"]["ce"][0]
