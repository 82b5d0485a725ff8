"""bench/quant_cluster.py --smoke runs end to end and prints every table (numbers meaningless at this size).

Load-proof: no wall-clock limit (a loaded CI machine is slower, not wrong) and nothing about speed asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quant_cluster_smoke(tmp_path: Path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "quant_cluster.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for title in (
        "### Quantization on top of pruning",
        "### Clustering k=16 after 50% unstructured pruning",
        "### Low rank",
        "### Targets",
        "machine:",
        "command:",
    ):
        assert title in text, title
    for variant in (
        "pruned fp32",
        "static int8 (minmax)",
        "static int8 (percentile)",
        "static int8 (entropy)",
        "dynamic int8",
        "QAT int8 (KD)",
        "fp16",
    ):
        assert text.count(f"| {variant} |") == 2, variant  # digits and cifar10
    summary = json.loads((out / "summary.json").read_text())
    assert {
        "digits",
        "cifar10",
        "digits_cluster",
        "cifar10_cluster",
        "digits_lowrank",
        "cifar10_lowrank",
    } <= set(summary)
    assert summary["digits_cluster"]["ratio"] > 1
    assert (out / "digits" / "quant" / "model.int8-minmax.onnx").exists()
    assert (out / "cifar10" / "cluster" / "model.cluster.xz").exists()


def test_quant_cluster_starts_from_a_kept_teacher(tmp_path: Path):
    """The full run reuses the CIFAR benchmark's teacher (--teacher): no train stage, that model is evaluated."""
    import torch

    from distillprune.core.checkpoint import ArchSpec, save_checkpoint
    from distillprune.measure.metrics import count_params
    from distillprune.models import build_model

    kw = {"widths": [8, 16, 16], "blocks": [1, 1, 1]}
    torch.manual_seed(0)
    teacher = build_model("resnet", 10, (3, 32, 32), **kw)
    save_checkpoint(tmp_path / "teacher", teacher, ArchSpec("resnet", 10, [3, 32, 32], kw))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "quant_cluster.py"),
        "--smoke",
        "--setups",
        "cifar10",
        "--model",
        "resnet",
        "--teacher",
        str(tmp_path / "teacher"),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| static int8 (minmax) |") == 1
    stages = json.loads((out / "cifar10" / "quant" / "report.json").read_text())["stages"]
    assert [s["type"] for s in stages[:2]] == ["evaluate", "prune"]
    assert stages[0]["params"] == count_params(teacher)

    bad = subprocess.run(
        cmd[:-4] + ["--teacher", str(tmp_path / "nowhere"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "no distillprune checkpoint" in bad.stderr
