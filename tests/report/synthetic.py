"""A synthetic run folder with every field the HTML report renders: per-layer widths (a removed
block, narrowed layers, a low-rank factorisation), a target search plan with candidates, latency
spreads, a deployed int8 file, metrics.jsonl with prune steps, a resumed epoch and a torn last
line, and the recipe in a stage checkpoint. Built from data only: no model is trained."""

from __future__ import annotations

import json
from pathlib import Path

from distillprune.report.report import CompressionReport, StageResult

DENSE = {
    "conv1": 16,
    "layer1.0.conv1": 16,
    "layer1.0.conv2": 16,
    "layer1.1.conv1": 16,
    "layer1.1.conv2": 16,
    "layer2.0.conv1": 32,
    "layer2.0.conv2": 32,
    "layer2.0.shortcut.0": 32,
    "layer2.1.conv1": 32,
    "layer2.1.conv2": 32,
    "fc": 10,
}
PRUNED = {
    "conv1": 8,
    "layer1.0.conv1": 8,
    "layer1.0.conv2": 8,
    "layer2.0.conv1": 16,
    "layer2.0.conv2": 16,
    "layer2.0.shortcut.0": 16,
    "layer2.1.conv1": 16,
    "layer2.1.conv2": 16,
    "fc": 10,
}
LOWRANK = {k: v for k, v in PRUNED.items() if k != "layer2.0.conv1"}
LOWRANK = dict(
    list(LOWRANK.items())[:3] + [("layer2.0.conv1.0", 8), ("layer2.0.conv1.1", 16)] + list(LOWRANK.items())[3:]
)
ENV = {
    "python": "3.11.7",
    "torch": "2.13.0+cpu",
    "onnxruntime": "1.32.0",
    "machine": "x86_64",
    "processor": "x86_64",
    "cpu_count": 2,
    "cpu_model": "AMD EPYC 7B13",
    "cpu_flags": ["avx", "avx2", "fma"],
    "torch_threads": 2,
    "onnx": "1.23.2",
    "torch_pruning": "1.6.1",
    "numpy": "2.4.6",
    "distillprune": "0.1.0",
    "ort_threads": 1,
}
CANDIDATES = [
    {
        "label": "depth 0.0, width 0.30",
        "macs": 4_100_000,
        "latency_ms": {"ort_bs1": 0.210, "ort_bs32": 5.1},
        "speedup": 1.43,
        "est_top1": 96.1,
        "chosen": False,
    },
    {
        "label": "depth 0.0, width 0.55",
        "macs": 2_300_000,
        "latency_ms": {"ort_bs1": 0.150, "ort_bs32": 3.2},
        "speedup": 2.0,
        "est_top1": 88.4,
        "chosen": False,
    },
    {
        "label": "depth 0.25, width 0.40",
        "macs": 2_000_000,
        "latency_ms": {"ort_bs1": 0.140, "ort_bs32": 2.9},
        "speedup": 2.14,
        "est_top1": 91.2,
        "chosen": True,
    },
    {
        "label": "depth 0.5, width 0.20",
        "macs": 1_800_000,
        "latency_ms": {"ort_bs1": 0.120, "ort_bs32": 2.5},
        "speedup": 2.5,
        "est_top1": 70.3,
        "chosen": False,
    },
    {
        "label": "depth 0.5, width 0.60",
        "macs": 900_000,
        "latency_ms": {"ort_bs1": 0.090},
        "speedup": 3.33,
        "est_top1": None,
        "chosen": False,
    },
]
PLAN = {
    "target": {"latency_speedup": 2.0, "batch_size": 1},
    "achieved": 2.14,
    "candidates": CANDIDATES,
    "width_ratio": 0.4,
    "blocks": 1,
}
RECIPE = {
    "name": "synthetic",
    "seed": 0,
    "model": {"name": "resnet", "kwargs": {"widths": [16, 32]}},
    "data": {"source": "digits"},
    "stages": [
        {"type": "train", "epochs": 4},
        {"type": "prune"},
        {"type": "lowrank"},
        {"type": "finetune", "epochs": 3},
        {"type": "quantize"},
        {"type": "export"},
    ],
}


def _stage(
    i: int,
    kind: str,
    acc: float,
    params: int,
    macs: int,
    size: int,
    bs1: float,
    bs32: float,
    widths: dict[str, int],
    **extra,
) -> StageResult:
    return StageResult(
        i,
        f"{i}:{kind}",
        kind,
        1.5 * i,
        accuracy=acc,
        params=params,
        nonzero_params=params,
        macs=macs,
        onnx_bytes=size,
        latency_ms={"ort_bs1": bs1, "ort_bs32": bs32},
        widths=dict(widths),
        **extra,
    )


def synthetic_report(name: str = "synthetic", faster: float = 1.0) -> CompressionReport:
    """``faster`` divides the compressed stages' latencies (another recipe's result)."""
    rep = CompressionReport(name, dict(ENV))
    rep.add(
        _stage(
            1,
            "train",
            97.5,
            700_000,
            6_500_000,
            2_800_000,
            0.300,
            8.8,
            DENSE,
            details={"epochs": 4, "final_loss": 0.05},
        )
    )
    rep.add(
        _stage(
            2,
            "prune",
            96.9,
            80_000,
            1_900_000,
            320_000,
            0.135,
            2.7,
            PRUNED,
            details={"plan": PLAN, "removed_blocks": ["layer1.1"], "steps": 2, "epochs": 4},
            speedups={"ort_bs1": 2.22},
            latency_spread={"ort_bs1": [2.05, 2.40]},
            load={"before": {"load1": 6.1, "runnable": 9}, "after": {"load1": 7.3, "runnable": 11}},
        )
    )
    rep.add(
        _stage(3, "lowrank", 96.4, 60_000, 1_500_000, 250_000, 0.128, 2.4, LOWRANK, details={"layers": 1, "epochs": 2})
    )
    rep.add(
        _stage(4, "finetune", 97.3, 60_000, 1_500_000, 250_000, 0.126, 2.3, LOWRANK, details={"kd": True, "epochs": 3})
    )
    rep.add(
        _stage(
            5,
            "quantize",
            97.2,
            60_000,
            1_500_000,
            90_000,
            0.140,
            2.0,
            LOWRANK,
            artefact="model.int8.onnx",
            details={"scheme": "static"},
        )
    )
    rep.add(StageResult(6, "6:export", "export", 0.2, details={"onnx": "model.onnx", "max_abs_diff": 1e-6}))
    for s in rep.stages[1:]:
        s.latency_ms = {k: v / faster for k, v in s.latency_ms.items()}
        s.accuracy = None if s.accuracy is None else round(s.accuracy - 2 * (faster - 1), 2)
    return rep


def metrics_lines() -> list[str]:
    recs = []
    for e in range(1, 5):
        recs.append(
            {
                "tag": "1:train",
                "step": e,
                "loss": 2.0 / e,
                "train_acc": 60 + 9 * e,
                "test_acc": 58 + 9 * e,
                "lr": 0.2 * (1 - e / 5),
            }
        )
    for phase in ("step1", "step2"):
        for e in (1, 2):
            recs.append(
                {
                    "tag": f"2:prune/{phase}",
                    "step": e,
                    "loss": 1.0 / e,
                    "train_acc": 90 + e,
                    "test_acc": 89 + e,
                    "lr": 0.05 / e,
                }
            )
    for e in (1, 2):
        recs.append(
            {
                "tag": "3:lowrank/finetune",
                "step": e,
                "loss": 0.5 / e,
                "train_acc": 93 + e,
                "test_acc": 92 + e,
                "lr": 0.01,
            }
        )
    for e in (1, 2, 2, 3):  # epoch 2 twice: a resumed run repeated it; the last record wins
        recs.append(
            {
                "tag": "4:finetune",
                "step": e,
                "loss": 0.3 / e,
                "train_acc": 95 + e,
                "test_acc": 94 + e,
                "lr": 0.05 * (1 - e / 4),
            }
        )
    return [json.dumps(r) for r in recs] + ['{"tag": "4:finetune", "step": 4, "lo']  # torn by a kill


def write_run(folder: Path, name: str = "synthetic", with_extras: bool = True, faster: float = 1.0) -> Path:
    """A run folder on disk: report.json, and with ``with_extras`` metrics.jsonl and a stage checkpoint's
    model.json carrying the recipe (a folder without them is what an old or API-only run leaves)."""
    folder.mkdir(parents=True, exist_ok=True)
    synthetic_report(name, faster).save(folder)
    if with_extras:
        (folder / "metrics.jsonl").write_text("\n".join(metrics_lines()) + "\n")
        stage = folder / "stages" / "04_finetune"
        stage.mkdir(parents=True)
        (stage / "model.json").write_text(json.dumps({"format": "distillprune/1", "recipe": RECIPE, "stage": 4}))
    return folder


def old_report_dict() -> dict:
    """report.json as distillprune wrote it before per-layer widths, environment details or plans."""
    d = synthetic_report("old").to_dict()
    for s in d["stages"]:
        for k in ("widths", "speedups", "latency_spread", "timing", "float_model", "load"):
            s.pop(k, None)
        if s.get("details"):
            s["details"].pop("plan", None)
    d["environment"] = {
        k: ENV[k] for k in ("python", "torch", "onnxruntime", "machine", "processor", "cpu_count", "ort_threads")
    }
    return d
