"""The report: data first (``report.json`` is the source of truth), rendering separate."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from distillprune.core.io import loads, write_json
from distillprune.core.reporting import Details, details_from_dict, to_jsonable
from distillprune.errors import DistillpruneError

#: run on every loaded report (``report.render`` adds its Markdown renderer, so a report that loads renders):
#: the renderer reads this module's types, this module never imports the renderer
LOAD_CHECKS: list[Callable[[CompressionReport], object]] = []


#: what a stage's quality is read as, by key: a classifier's top-1 (``accuracy``), or for an embedding model
#: without one its kNN top-1 on the recipe's probe data (``metrics.knn_top1``); (label, short label)
QUALITY = {"accuracy": ("top-1", "top-1"), "knn_top1": ("kNN top-1", "kNN")}


@dataclass
class StageResult:
    index: int
    name: str  # e.g. "2:prune"
    type: str
    seconds: float
    accuracy: float | None = None
    params: int | None = None
    nonzero_params: int | None = None
    macs: int | None = None
    onnx_bytes: int | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    details: Details | dict[str, Any] | None = None  # the stage's typed report (a dict for older reports)
    flags: list[str] = field(default_factory=list)
    artefact: str | None = None  # the file this row measures when it is not the float model (int8 ONNX...)
    float_model: dict[str, Any] | None = None  # with an artefact: the float model's accuracy, bytes, latency
    speedups: dict[str, float] = field(default_factory=dict)  # vs the dense model, timed back to back (median)
    latency_spread: dict[str, list[float]] = field(default_factory=dict)  # min, max of the pairs' speedups
    timing: str | None = None  # how the latency was obtained ("paired with 0:input", "reused from 2:prune" ...)
    widths: dict[str, int] = field(default_factory=dict)  # out-channels/-features of each Conv/Linear, by name
    metrics: dict[str, float] = field(default_factory=dict)  # task quality besides top-1 (embedders: cosine...)
    #: the machine while the row was timed: {"before": {"load1": 1-minute load average, "runnable": processes
    #: runnable, the timing one included}, "after": {...}} (empty in reports written before it was recorded)
    load: dict[str, dict[str, float]] = field(default_factory=dict)

    def details_dict(self) -> dict[str, Any]:
        """The details as a plain mapping (for rendering), whatever their type: typed, or the mapping of a kind
        whose module is not loaded (``distillprune report`` imports no torch), the same either way."""
        d = self.details.to_dict() if isinstance(self.details, Details) else dict(self.details or {})
        return {k: v for k, v in d.items() if k != "kind"}

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["details"] = self.details.to_dict() if isinstance(self.details, Details) else self.details
        return to_jsonable(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageResult:
        if not isinstance(d, dict):
            raise TypeError(f"a stage is a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        check_field_types(cls, kw, f"stage {kw.get('index', '?')}")
        kw["details"] = details_from_dict(kw.get("details"))
        return cls(**kw)

    @property
    def measured(self) -> bool:
        return self.macs is not None

    def quality(self, key: str = "accuracy") -> float | None:
        """The stage's quality figure ``key`` (a key of ``QUALITY``), in %."""
        return self.accuracy if key == "accuracy" else self.metrics.get(key)


@dataclass
class CompressionReport:
    recipe: str
    environment: dict[str, Any]
    stages: list[StageResult] = field(default_factory=list)
    baseline_index: int | None = None  # the dense reference (first measured stage)
    version: int = 1

    @property
    def baseline(self) -> StageResult | None:
        return next((s for s in self.stages if s.index == self.baseline_index), None)

    @property
    def final(self) -> StageResult | None:
        measured = [s for s in self.stages if s.measured]
        return measured[-1] if measured else None

    @property
    def quality_key(self) -> str:
        """What the report plots and compares like top-1: ``accuracy`` when a stage has a top-1, else
        ``knn_top1`` when a stage has one (an embedding model probed without a classifier)."""
        measured = [s for s in self.stages if s.measured]
        if any(s.accuracy is not None for s in measured):
            return "accuracy"
        return "knn_top1" if any(s.metrics.get("knn_top1") is not None for s in measured) else "accuracy"

    def add(self, result: StageResult) -> None:
        if result.measured and self.baseline_index is None:
            self.baseline_index = result.index
        base = self.baseline
        if base is not None and result.measured and result is not base:
            for key, ms in result.latency_ms.items():
                sp = self.speedup(result, key)
                if sp is not None and sp < 1 / 1.05:
                    result.flags.append(f"slower than the dense model on {key} ({ms:.3f} ms, speedup {sp:.2f}x)")
        self.stages.append(result)

    def speedup(self, s: StageResult, key: str) -> float | None:
        """The measured speedup over the dense model: the back-to-back (paired) one when the stage has it."""
        if key in s.speedups:
            return s.speedups[key]
        b = self.baseline
        if b is None or key not in b.latency_ms or key not in s.latency_ms:
            return None
        return b.latency_ms[key] / s.latency_ms[key]

    def mac_ratio(self, s: StageResult) -> float | None:
        b = self.baseline
        return b.macs / s.macs if b and b.macs and s.macs else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "environment": self.environment,
            "stages": [s.to_dict() for s in self.stages],
            "baseline_index": self.baseline_index,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompressionReport:
        if not isinstance(d, dict):
            raise TypeError(f"expected a JSON object, got {type(d).__name__}")
        check_field_types(cls, {k: v for k, v in d.items() if k != "stages"}, "report")
        if not isinstance(d.get("stages", []), list):
            raise TypeError(f"'stages' is a list of stages, got {type(d['stages']).__name__}")
        stages = [StageResult.from_dict(s) for s in d.get("stages", [])]
        return cls(d["recipe"], d.get("environment", {}), stages, d.get("baseline_index"), d.get("version", 1))

    def save(self, run_dir: str | Path) -> Path:
        return write_json(Path(run_dir) / "report.json", self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> CompressionReport:
        p = Path(path)
        p = p / "report.json" if p.is_dir() else p
        try:
            report = cls.from_dict(loads(p.read_text(encoding="utf-8")))
            for check in LOAD_CHECKS:  # a report that loads also renders (types inside details included)
                check(report)
            return report
        except (
            OSError,
            UnicodeDecodeError,
            json.JSONDecodeError,
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            IndexError,
            RecursionError,
        ) as e:
            raise DistillpruneError(f"{p}: not a readable report.json ({type(e).__name__}: {e})") from None


# CPU features that decide which ONNX Runtime / oneDNN kernels run (int8 needs VNNI to be fast).
CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "sve",
)
LIBRARIES = ("torch", "onnxruntime", "onnx", "torch-pruning", "numpy", "distillprune")


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model name and the performance-relevant flags, from /proc/cpuinfo where there is one."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the first processor's block is enough
            continue
        fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    out: dict[str, Any] = {"cpu_flags": [f for f in CPU_FLAGS if f in flags]}
    if fields.get("model name"):
        out["cpu_model"] = fields["model name"]
    return out


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in LIBRARIES:
        try:
            out[name.replace("-", "_")] = version(name)
        except PackageNotFoundError:
            continue
    return out


def environment() -> dict[str, Any]:
    import onnxruntime
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        **cpu_info(),
        "torch_threads": torch.get_num_threads(),
    }
    env.update({k: v for k, v in library_versions().items() if k not in env})
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def check_field_types(cls: type, values: dict[str, Any], where: str) -> None:
    """TypeError naming the first of ``values`` whose JSON type does not fit ``cls``'s field (a report.json
    edited by hand or damaged); fields typed otherwise than below are not checked here."""
    hints = get_type_hints(cls)
    for key, value in values.items():
        if key in hints and not _fits(value, hints[key]):
            want = getattr(hints[key], "__name__", None) or str(hints[key])
            raise TypeError(f"{where}: '{key}' is {value!r:.80}, expected {want}")


def _fits(value: Any, tp: Any) -> bool:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict) and (not args or all(_fits(v, args[1]) for v in value.values()))
    return True
