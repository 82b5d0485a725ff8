"""Latency you can trust on a busy machine: every stage is timed back to back with the dense model.

The first measured model of a run (the input model, or the trained teacher) is the baseline; its ONNX file is
kept (``baseline.onnx`` in the run folder, so a resumed run times against the same graph). Every later
stage, and every deployed artefact (an int8 file), is timed in pairs alternating with the baseline; the
row's speedup is the median of the pairs' ratios, with their min-max spread. A stage that did not change
the architecture (fine-tuning, sparsity, clustering: the same dense kernels) reuses the previous timing
instead of reporting noise as a "stage speedup".

Each timing records the machine's load before and after it (``machine_load``: the 1-minute load average and
the processes runnable at that moment, from ``/proc/loadavg``), so a reader can tell afterwards why a timing
was noisy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from distillprune.core.io import atomic_write
from distillprune.core.progress import phase, tick
from distillprune.measure.latency import LatencyConfig, OrtTimer, ort_latency


def machine_load(loadavg: str | Path = "/proc/loadavg") -> dict[str, float] | None:
    """``{"load1": 1-minute load average, "runnable": processes runnable now}`` (this one included: it is
    running to read the file), or None where the kernel offers no ``/proc/loadavg``."""
    try:
        fields = Path(loadavg).read_text().split()
        return {"load1": float(fields[0]), "runnable": int(fields[3].split("/")[0])}
    except (OSError, ValueError, IndexError):
        return None


def architecture_key(model: nn.Module) -> str:
    """Module types and tensor shapes: equal keys time the same (dense kernels ignore the values)."""
    parts = [f"{n}:{type(m).__name__}" for n, m in model.named_modules()]
    parts += [f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items()]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


@dataclass
class Timing:
    latency_ms: dict[str, float] = field(default_factory=dict)
    speedups: dict[str, float] = field(default_factory=dict)
    spread: dict[str, list[float]] = field(default_factory=dict)
    how: str = ""
    load: dict[str, dict[str, float]] = field(default_factory=dict)  # {"before": machine_load(), "after": ...}


class StageTimer:
    """Times the run's models against its baseline (see the module docstring)."""

    def __init__(self, cfg: LatencyConfig, input_shape: tuple[int, ...], run_dir: Path | None):
        self.cfg, self.input_shape, self.run_dir = cfg, tuple(input_shape), run_dir
        self.timer = OrtTimer(cfg)
        self.baseline: bytes | None = None
        self.baseline_name = ""
        self.last: tuple[str, Timing, str] | None = None  # (architecture key, its timing, stage name)

    def restore(self, baseline_name: str) -> None:
        """On resume: the baseline file the run wrote."""
        f = self.run_dir / "baseline.onnx" if self.run_dir else None
        if f is not None and f.is_file():
            self.baseline, self.baseline_name = f.read_bytes(), baseline_name

    def time(self, onnx: bytes, name: str, arch: str | None = None) -> Timing:
        """The timing of a stage's ONNX graph (``arch``: its architecture key, for reuse), with the machine's
        load before and after it."""
        if not self.cfg.enabled:
            return Timing()
        reused = self.baseline is not None and self._reuses(arch)  # (keeps the load of the timing it reuses)
        before = None if reused else machine_load()
        with phase("timing (ONNX Runtime)", unit="batch sizes", total=len(self.cfg.batch_sizes)):
            t = self._time(onnx, name, arch)
        after = None if reused else machine_load()
        if before is not None and after is not None:
            t.load = {"before": before, "after": after}
        if arch is not None:
            self.last = (arch, t, name)
        return t

    def _reuses(self, arch: str | None) -> bool:
        return arch is not None and self.last is not None and self.last[0] == arch

    def _time(self, onnx: bytes, name: str, arch: str | None) -> Timing:
        if self.baseline is None:
            self.baseline, self.baseline_name = onnx, name
            if self.run_dir is not None:
                atomic_write(self.run_dir / "baseline.onnx", lambda tmp: Path(tmp).write_bytes(onnx))
            t = Timing(
                {f"ort_bs{k[2:]}": v for k, v in ort_latency(onnx, self.input_shape, self.cfg).items()}, how="baseline"
            )
        elif self._reuses(arch):
            assert self.last is not None
            prev = self.last[1]
            t = Timing(
                dict(prev.latency_ms),
                dict(prev.speedups),
                dict(prev.spread),
                f"reused from {self.last[2]} (same architecture)",
                {k: dict(v) for k, v in prev.load.items()},
            )
        else:
            t = Timing(how=f"paired with {self.baseline_name} ({self.cfg.pairs} pairs)")
            for bs in self.cfg.batch_sizes:
                p = self.timer.paired(onnx, self.baseline, self.input_shape, bs)
                key = f"ort_bs{bs}"
                t.latency_ms[key] = round(p.ms, 4)
                t.speedups[key] = round(p.speedup, 4)
                t.spread[key] = [round(v, 4) for v in p.spread]
                tick()
        return t

    def flags(self, t: Timing, mac_ratio: float | None) -> list[str]:
        """Timings a reader should not trust: a speedup above the MAC ratio, or pairs too spread to resolve."""
        out = []
        for key, sp in t.speedups.items():
            if mac_ratio and sp > 1.1 * mac_ratio:
                out.append(
                    f"{key}: measured speedup {sp:.2f}x exceeds the MAC ratio {mac_ratio:.2f}x by >10% "
                    "(noisy timing or a runtime effect worth checking)"
                )
            lo, hi = t.spread.get(key, [sp, sp])
            if sp and (hi - lo) / sp > self.cfg.max_spread:
                out.append(
                    f"{key}: speedup pairs spread {lo:.2f}x-{hi:.2f}x: too noisy to resolve "
                    f"(> {100 * self.cfg.max_spread:.0f}% of the median)"
                )
        return out
