"""Shared helpers of the benchmark scripts, built on the library's own functions.

- the machine line (CPU model and flags, cores, torch / ONNX Runtime versions, GPU if any);
- teacher loading (or train-or-load for scripts that make their own teacher);
- KD fine-tuning of a model through the library's trainer (``train.fit`` + ``Distiller``);
- latency *side by side*: a candidate ONNX and the reference (teacher) ONNX timed back to back in
  pairs on ONNX Runtime CPU (``measure.latency.ort_latency``), the order alternating, so a machine
  that slows down during a run slows both alike; the median speedup and its min-max spread;
- results merged into one JSON file (a partial run adds rows to an earlier one), and markdown
  tables rendered from that JSON alone.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillprune.core.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from distillprune.core.io import write_json, write_text
from distillprune.data.base import DataBundle
from distillprune.distill.distiller import CrossEntropy, Distiller
from distillprune.export.onnx import onnx_bytes
from distillprune.measure.latency import LatencyConfig, ort_latency
from distillprune.measure.metrics import count_macs, count_params
from distillprune.train import FitSettings, OptimizerConfig, RuntimeConfig, ScheduleConfig, fit
from distillprune.train.context import Context, LoaderOptions

HINTON_KD = {"name": "kd", "temperature": 4.0, "alpha": 0.9}  # Hinton et al. 2015; the CE term keeps 0.1


# ------------------------------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import onnxruntime

    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), model)
        flags = sorted(set(re.findall(r"\b(avx512[a-z_0-9]*|avx_vnni|avx2)\b", text)))
    except OSError:
        pass
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": flags,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_line(m: dict[str, Any]) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return (
        f"{m['cpu']}, {m['cores']} cores (flags: {', '.join(m['flags']) or 'none'}){gpu}; "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}"
    )


# ------------------------------------------------------------------------------------------- teacher
def load_teacher(folder: str | Path) -> tuple[nn.Module, ArchSpec]:
    model, spec, _ = load_checkpoint(folder)
    return model.eval(), spec


def train_or_load_teacher(
    folder: str | Path,
    name: str,
    kwargs: dict,
    data: DataBundle,
    *,
    epochs: int,
    runtime: RuntimeConfig,
    batch_size: int,
    lr: float = 0.2,
    seed: int = 0,
) -> tuple[nn.Module, ArchSpec]:
    """Reuse the checkpoint in ``folder`` if there is one, else train it (CE, label smoothing 0.1) and save."""
    folder = Path(folder)
    if (folder / "model.json").exists():
        return load_teacher(folder)
    import distillprune as dp

    torch.manual_seed(seed)
    model = dp.build_model(name, data.num_classes, data.input_shape, **kwargs)
    spec = ArchSpec(name, data.num_classes, list(data.input_shape), dict(kwargs))
    fit(
        model,
        data,
        FitSettings(epochs, OptimizerConfig(lr=lr), ScheduleConfig(name="onecycle")),
        CrossEntropy(0.1),
        context=Context(runtime, LoaderOptions(batch_size=batch_size, seed=seed, crop_padding=4, hflip=True)),
    )
    save_checkpoint(folder, model.cpu(), spec, train={"epochs": epochs})
    return model.eval(), spec


# ------------------------------------------------------------------------------------------- training
def kd_finetune(
    model: nn.Module,
    teacher: nn.Module,
    data: DataBundle,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    runtime: RuntimeConfig,
    seed: int = 0,
    **teacher_speed: bool,
) -> dict[str, Any]:
    """Hinton KD from ``teacher`` for ``epochs`` (one-cycle SGD, crop + flip) through the library's trainer.

    Returns the fine-tuning seconds (training only, not the per-epoch evaluation), images/s, and the
    top-1 on the test split after the last epoch (the trainer's own evaluation)."""
    objective = Distiller.from_specs(teacher, [HINTON_KD], **teacher_speed)
    hist = fit(
        model,
        data,
        FitSettings(epochs, OptimizerConfig(lr=lr), ScheduleConfig(name="onecycle")),
        objective,
        context=Context(runtime, LoaderOptions(batch_size=batch_size, seed=seed, crop_padding=4, hflip=True)),
    )
    seconds = sum(h["seconds"] for h in hist)
    images = sum(h["images_per_s"] * h["seconds"] for h in hist)
    return {
        "top1": hist[-1]["test_acc"],
        "train_s": seconds,
        "img_s": images / max(seconds, 1e-9),
        "img_s_last_epoch": hist[-1]["images_per_s"],
        "epochs": epochs,
        "final_loss": hist[-1]["loss"],
        "teacher_speed": vars(objective.teacher_speed),
    }


# ------------------------------------------------------------------------------------------- size
def size_of(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    return {"params": count_params(model), "macs": count_macs(model, input_shape)}


def onnx_of(model: nn.Module, input_shape: Sequence[int]) -> bytes:
    return onnx_bytes(model, input_shape)


# ------------------------------------------------------------------------------------------- latency
def side_by_side(
    candidate: bytes | str | Path,
    reference: bytes | str | Path,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 32),
    pairs: int = 5,
    threads: int = 1,
    cfg: LatencyConfig | None = None,
) -> dict[str, dict[str, float]]:
    """Time ``candidate`` and ``reference`` back to back, ``pairs`` times per batch size (the order
    alternates); per batch size: the candidate's and the reference's median ms with their min-max,
    and the median speedup (reference / candidate, per pair) with its min-max."""
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    base = cfg or LatencyConfig(warmup=5, repeats=5, min_window_s=0.1)
    out = {}
    for bs in batch_sizes:
        load = os.getloadavg()[0]  # how busy the machine was: the spread says how much that mattered
        lc = base.model_copy(update={"batch_sizes": [bs], "threads": threads})
        cand, ref = [], []
        for i in range(pairs):
            order = [(reference, ref), (candidate, cand)]
            for blob, sink in order if i % 2 == 0 else order[::-1]:
                sink.append(ort_latency(blob, input_shape, lc)[f"bs{bs}"])
        ratios = [r / c for r, c in zip(ref, cand, strict=True)]
        out[f"bs{bs}"] = {
            "ms": statistics.median(cand),
            "ms_min": min(cand),
            "ms_max": max(cand),
            "ref_ms": statistics.median(ref),
            "ref_ms_min": min(ref),
            "ref_ms_max": max(ref),
            "speedup": statistics.median(ratios),
            "speedup_min": min(ratios),
            "speedup_max": max(ratios),
            "pairs": pairs,
            "load1": round(load, 2),
        }
    return out


# ------------------------------------------------------------------------------------------- results
def load_results(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def save_results(path: str | Path, results: dict[str, Any]) -> None:
    write_json(path, results)


def add_run(results: dict[str, Any], key: str, record: dict[str, Any], *, seed: int) -> None:
    """Put one seed's record of row ``key`` into ``results`` (replacing an earlier run of that seed)."""
    runs = [r for r in results.get(key, []) if r.get("seed") != seed]
    results[key] = sorted(runs + [{**record, "seed": seed}], key=lambda r: r["seed"])


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0


# ------------------------------------------------------------------------------------------- tables
def mean_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of the seeds' numbers; latency: mean of the medians, min of the mins, max of the maxes."""
    first = runs[0]
    out: dict[str, Any] = {k: v for k, v in first.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
    for k, v in first.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and all(r.get(k) is not None for r in runs):
            out[k] = sum(r[k] for r in runs) / len(runs)
    if "latency" in first:
        out["latency"] = {
            bs: {k: _combine(k, [r["latency"][bs][k] for r in runs]) for k in d} for bs, d in first["latency"].items()
        }
    out["n"] = len(runs)
    return out


def _combine(key: str, values: list[float]) -> float:
    return min(values) if key.endswith("_min") else max(values) if key.endswith("_max") else sum(values) / len(values)


Column = tuple[str, Callable[[dict[str, Any], dict[str, Any]], str]]


def render_table(rows: list[tuple[str, dict[str, Any]]], columns: list[Column], reference: dict[str, Any]) -> str:
    """A markdown table: one line per (label, row), cells from ``columns`` (header, fn(row, reference))."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for label, row in rows:
        cells = [label] + [fn(row, reference) for _, fn in columns[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(path: str | Path, text: str) -> None:
    write_text(path, text + "\n")


def fmt_spread(d: dict[str, float] | None, key: str, fmt: str, suffix: str = "") -> str:
    """``median (min-max)`` of a side-by-side entry, e.g. ``2.10x (1.95-2.22)``."""
    if not d or key not in d:
        return "-"
    return f"{d[key]:{fmt}}{suffix} ({d[key + '_min']:{fmt}}-{d[key + '_max']:{fmt}})"
