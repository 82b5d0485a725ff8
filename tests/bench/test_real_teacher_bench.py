"""The real-teacher benchmark (bench/cifar10_real_teacher.py) and its GPU wrapper (bench/gpu.sh) cannot rot:
their --quick modes run here on generated CIFAR-shaped data and a tiny teacher checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distillprune.core.checkpoint import ArchSpec, save_checkpoint
from distillprune.models import build_model

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "cifar10_real_teacher.py"
ENV = {
    **os.environ,
    "PYTHONWARNINGS": "ignore",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("real_teacher")
    rng = np.random.default_rng(0)
    np.savez(
        d / "tiny.npz",
        x_train=rng.integers(0, 255, (192, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, 192),
        x_test=rng.integers(0, 255, (64, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, 64),
    )
    kw = {"widths": [16, 32, 64], "blocks": [2, 2, 2]}
    torch.manual_seed(0)
    teacher = build_model("resnet", 10, (3, 32, 32), **kw)
    save_checkpoint(d / "teacher", teacher, ArchSpec("resnet", 10, [3, 32, 32], kw))
    return {"data": d / "tiny.npz", "teacher": d / "teacher", "dir": d}


def run(inputs: dict, out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--source",
        "npz",
        "--data",
        str(inputs["data"]),
        "--teacher",
        str(inputs["teacher"]),
        "--out",
        str(out),
        "--keep-blocks",
        "1",
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_quick_peer_rows_trainer_line_and_merge(inputs):
    out = inputs["dir"] / "out"
    res = run(inputs, out, "--rows", "teacher,trainer,tp_l2,tp_l2_r8,drop")
    assert "quick: no claims" in res.stdout
    results = json.loads((out / "results.json").read_text())
    t = results["teacher"][0]
    assert t["latency"]["bs1"]["pairs"] == 2 and set(t["latency"]) == {"bs1", "bs32"}
    for key in ("tp_l2", "tp_l2_r8", "drop"):
        r = results[key][0]
        assert r["macs"] < t["macs"] and r["params"] < t["params"], key
        assert 0 <= r["top1_before"] <= 100 and 0 <= r["top1"] <= 100 and r["img_s"] > 0, key
        lat = r["latency"]["bs1"]
        assert lat["speedup_min"] <= lat["speedup"] <= lat["speedup_max"], key
    assert t["macs"] / results["tp_l2"][0]["macs"] >= 2.0  # the bisection reached its MAC target
    assert results["drop"][0]["blocks_per_stage"] == 1
    tl = results["trainer"][0]
    assert tl["img_s"]["plain"] > 0 and tl["img_s"]["distillprune"] > 0 and tl["ratio"] > 0
    table = (out / "table.md").read_text()
    assert table.startswith("quick: no claims") and table.count("\n| ") >= 5 and "Trainer line" in table
    # a partial run adds its rows to the earlier results instead of dropping them; --retime re-times rows
    # without training, from the saved ONNX file or (tp_l2 here) the architecture rebuilt from the record
    Path(results["tp_l2"][0]["onnx"]).unlink()
    run(inputs, out, "--rows", "tp_l2,drop", "--retime")
    merged = json.loads((out / "results.json").read_text())
    assert {"teacher", "trainer", "tp_l2", "tp_l2_r8", "drop"} <= set(merged) and len(merged["drop"]) == 1
    for key in ("tp_l2", "drop"):
        assert merged[key][0]["retimed"] and merged[key][0]["top1"] == results[key][0]["top1"]
    assert "retimed" not in merged["tp_l2_r8"][0]


@pytest.mark.slow
def test_quick_distillprune_row_runs_the_recipe_path(inputs):
    out = inputs["dir"] / "out_dp"
    run(inputs, out, "--rows", "dp_2x", "--depth-fractions", "0", "0.5")
    r = json.loads((out / "results.json").read_text())["dp_2x"][0]
    assert "error" not in r, r.get("error")
    assert r["target"] == 2.0 and r["plan"] and r["top1"] is not None and r["top1_before"] is not None
    assert (out / "runs" / "dp_2x_seed0" / "model.onnx").is_file()  # the export stage ran
    assert r["latency"]["bs1"]["speedup"] > 0


@pytest.mark.slow
def test_gpu_script_quick_path_runs_on_the_cpu(inputs):
    out = inputs["dir"] / "gpu_out"
    env = {
        **ENV,
        "DATA": str(inputs["data"]),
        "SOURCE": "npz",
        "TEACHER": str(inputs["teacher"]),
        "OUT": str(out),
        "ROWS": "teacher,drop,trainer",
        "PYTHON": sys.executable,
        "THREADS": "2",
        "BUDGET_S": "100000",
    }
    res = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--quick", "--keep-blocks", "1"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "run.log", "table.md"]
    results = json.loads((out / "results.json").read_text())
    assert results["setup"]["gpu"] is True and {"teacher", "drop", "trainer"} <= set(results)
    assert "quick: no claims" in (out / "table.md").read_text()
