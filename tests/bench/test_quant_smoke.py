"""bench/quant_cluster.py --smoke runs end to end and prints every table (numbers meaningless at this size)"""

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
        timeout=300,
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
