"""The report: data first (``report.json`` is the source of truth), rendering separate."""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from distillprune.core.io import write_json, write_text
from distillprune.core.reporting import Details, details_from_dict, to_jsonable
from distillprune.errors import DistillpruneError


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
    metrics: dict[str, float] = field(default_factory=dict)  # task quality besides top-1 (embedders: cosine...)

    def details_dict(self) -> dict[str, Any]:
        """The details as a plain mapping (for rendering), whatever their type."""
        if isinstance(self.details, Details):
            return {k: v for k, v in self.details.to_dict().items() if k != "kind"}
        return dict(self.details or {})

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["details"] = self.details.to_dict() if isinstance(self.details, Details) else self.details
        return to_jsonable(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageResult:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["details"] = details_from_dict(kw.get("details"))
        return cls(**kw)

    @property
    def measured(self) -> bool:
        return self.macs is not None


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

    def add(self, result: StageResult) -> None:
        if result.measured and self.baseline_index is None:
            self.baseline_index = result.index
        base = self.baseline
        if base is not None and result.measured and result is not base:
            for key, ms in result.latency_ms.items():
                if key in base.latency_ms and ms > base.latency_ms[key] * 1.05:
                    result.flags.append(f"slower than the dense model on {key} "
                                        f"({ms:.3f} ms vs {base.latency_ms[key]:.3f} ms)")
        self.stages.append(result)

    def speedup(self, s: StageResult, key: str) -> float | None:
        b = self.baseline
        if b is None or key not in b.latency_ms or key not in s.latency_ms:
            return None
        return b.latency_ms[key] / s.latency_ms[key]

    def mac_ratio(self, s: StageResult) -> float | None:
        b = self.baseline
        return b.macs / s.macs if b and b.macs and s.macs else None

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "environment": self.environment,
                "stages": [s.to_dict() for s in self.stages], "baseline_index": self.baseline_index,
                "version": self.version}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompressionReport:
        if not isinstance(d, dict):
            raise TypeError(f"expected a JSON object, got {type(d).__name__}")
        stages = [StageResult.from_dict(s) for s in d.get("stages", [])]
        return cls(d["recipe"], d.get("environment", {}), stages, d.get("baseline_index"), d.get("version", 1))

    def save(self, run_dir: str | Path) -> Path:
        return write_json(Path(run_dir) / "report.json", self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> CompressionReport:
        p = Path(path)
        p = p / "report.json" if p.is_dir() else p
        try:
            return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DistillpruneError(f"{p}: not a readable report.json ({e})") from None


def environment() -> dict[str, Any]:
    import onnxruntime
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
           "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
           "cpu_count": __import__("os").cpu_count()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def write_markdown(report: CompressionReport, run_dir: str | Path) -> Path:
    from distillprune.report.render import render_markdown

    return write_text(Path(run_dir) / "report.md", render_markdown(report))
