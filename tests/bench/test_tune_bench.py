"""The tune benchmark script cannot rot: its --quick mode searches a tiny digits space end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("optuna")


@pytest.mark.slow
def test_tune_bench_quick(tmp_path: Path):
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "tune_resnet56.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| tuned |" in res.stdout and "| default |" in res.stdout
    result = json.loads((out / "results.json").read_text())
    assert result["trials"] == {"COMPLETE": 3}
    # the trials draw only a KD temperature and a learning rate: one plan, reused by the other trials
    assert result["plans"]["planned"] + result["plans"]["reused"] == 3 and result["plans"]["reused"] >= 1
    assert set(result["rows"]) == {"default", "tuned"}
    assert all(0 <= r["test_top1"] <= 100 for r in result["rows"].values())
    tuned = json.loads((out / "tuned" / "run.json").read_text())["recipe"]
    assert tuned["data"]["validation_split"] is None and tuned["data"]["limit_train"] is None  # all the data
