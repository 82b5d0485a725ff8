"""The target search: one algorithm for every model family, reaching a *measured* ONNX Runtime speedup (or a
MACs ratio) with what the family can cut.

The dense model is measured once (:class:`Baseline`), and every candidate against it through one measurement
strategy: :class:`MacsMeasure` (the MACs ratio, exact) or :class:`PairedOrt` (the candidate timed back to back
with the dense model through ``measure.latency.OrtTimer``: the median of pairs, robust to a machine whose load
drifts). A family describes what it can cut as :class:`Option` hooks, one per depth option (blocks or layers
removed, a way of spending width): each proposes a candidate, builds it, and after a measurement that misses
the band proposes the next one (or stops). The rules around the hooks are shared:

* the band is ``[target, target * (1 + tolerance)]`` (a plan that overshoots throws away accuracy); a noisy
  measurement aims at its middle, an exact one at the target;
* an option offers its candidate in the band; else the slowest that still reaches the target; else the one
  closest to the aim (:meth:`Search.kept`);
* the plan is the offer with the best family score (the CNN: the lowest estimated KD loss; an encoder: the
  most MACs kept) among those in the band, else those reaching the target, else -- timed -- those whose
  pairs straddle it (the target is within the machine's timing noise: taken with a note); none is one error
  line (:meth:`Search.choose`);
* every candidate is logged as it is measured, and listed in the plan.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from torch import nn

from distillprune.errors import DistillpruneError
from distillprune.export.onnx import onnx_bytes
from distillprune.measure.latency import LatencyConfig, OrtTimer
from distillprune.measure.metrics import count_macs
from distillprune.prune.config import SpeedTarget


@dataclass
class Candidate:
    """One plan the search built and measured."""

    label: str
    blocks: int  # the depth removed: residual blocks (CNN) or layers (encoder)
    macs: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    speedup: float | None = None  # measured, back to back with the dense model (median of pairs); None: not timed
    spread: list[float] | None = None  # min and max of the pairs' speedups
    macs_ratio: float | None = None
    est_top1: float | None = None  # top-1 (%) before fine-tuning on held-out *training* images (optimistic)
    est_kd: float | None = None  # validation KD loss to the teacher (lower is better)
    in_band: bool = False
    chosen: bool = False
    predicted: float | None = None  # the speedup (or MACs ratio) the planner's pricing predicted before timing
    prediction_error: float | None = None  # measured / predicted - 1, for a timed candidate


@dataclass(frozen=True)
class Band:
    """The accepted range of the achieved ratio: ``[goal, goal * (1 + tolerance)]``."""

    goal: float
    tolerance: float

    @property
    def lo(self) -> float:
        return self.goal

    @property
    def hi(self) -> float:
        return self.goal * (1 + self.tolerance)

    def contains(self, achieved: float) -> bool:
        return self.lo <= achieved <= self.hi


@dataclass
class Baseline:
    """The dense model as every candidate is compared with it: a CPU copy in eval mode, its input shape (one
    sample) and its MACs."""

    model: nn.Module
    shape: tuple[int, ...]
    macs: int

    @classmethod
    def of(cls, model: nn.Module, shape: tuple[int, ...]) -> Baseline:
        cpu = copy.deepcopy(model).cpu().eval()
        return cls(cpu, tuple(shape), count_macs(cpu, shape))


class Measure(Protocol):
    """How a candidate is measured against the baseline."""

    what: ClassVar[str]  # what the target names, for messages
    noisy: ClassVar[bool]  # a measurement that can differ between two runs (timing)
    baseline: Baseline

    @property
    def cost(self) -> float:
        """The dense model's cost in this measure's unit (ms, or MACs)."""
        ...

    def measure(self, cand: Candidate, cpu: nn.Module) -> float | None:
        """Fill ``cand`` (MACs already counted) with the measurement of ``cpu``; the measured speedup before
        rounding, None when nothing was timed."""
        ...

    def achieved(self, cand: Candidate) -> float:
        """The ratio the target is compared with."""
        ...

    def aim(self, band: Band) -> float:
        """The ratio a candidate aims at."""
        ...


@dataclass
class MacsMeasure:
    """The MACs ratio: exact, so it aims at the target itself."""

    baseline: Baseline
    what: ClassVar[str] = "MACs ratio"
    noisy: ClassVar[bool] = False

    @property
    def cost(self) -> float:
        return float(self.baseline.macs)

    def measure(self, cand: Candidate, cpu: nn.Module) -> float | None:
        return None  # the MACs are counted for every candidate

    def achieved(self, cand: Candidate) -> float:
        return cand.macs_ratio or 0.0

    def aim(self, band: Band) -> float:
        return band.goal


@dataclass
class PairedOrt:
    """The measured ONNX Runtime speedup at ``batch_size``: each candidate timed back to back with the dense
    model (``OrtTimer.paired``: the median of the pairs' ratios, and their spread; timed again with three times
    the pairs when they spread more than ``max_spread``). Noisy, so it aims at the middle of the band (noise
    either way stays inside it)."""

    baseline: Baseline
    timer: OrtTimer
    batch_size: int
    dense_onnx: bytes
    dense_ms: float  # the dense model's first timing: the unit the latency of candidates is expressed in
    what: ClassVar[str] = "speedup"
    noisy: ClassVar[bool] = True

    @classmethod
    def start(cls, baseline: Baseline, latency: LatencyConfig, batch_size: int) -> PairedOrt:
        timer = OrtTimer(latency)
        blob = onnx_bytes(baseline.model, baseline.shape)
        return cls(baseline, timer, batch_size, blob, timer.ms(blob, baseline.shape, batch_size))

    @property
    def cost(self) -> float:
        return self.dense_ms

    def measure(self, cand: Candidate, cpu: nn.Module) -> float | None:
        if cand.macs >= self.baseline.macs:  # nothing was cut: never "faster" than itself by noise
            cand.speedup, cand.spread = 1.0, [1.0, 1.0]
            return None
        shape = self.baseline.shape
        blob = onnx_bytes(cpu, shape)
        pair = self.timer.paired(blob, self.dense_onnx, shape, self.batch_size)
        if pair.relative_spread > self.timer.cfg.max_spread:  # too noisy to resolve: once more, three times longer
            pair = self.timer.paired(blob, self.dense_onnx, shape, self.batch_size, pairs=3 * self.timer.cfg.pairs)
        cand.latency_ms = {f"ort_bs{self.batch_size}": round(pair.ms, 4)}
        cand.speedup, cand.spread = round(pair.speedup, 3), [round(v, 3) for v in pair.spread]
        return pair.speedup

    def achieved(self, cand: Candidate) -> float:
        return cand.speedup or 0.0

    def aim(self, band: Band) -> float:
        return band.goal * (1 + band.tolerance / 2)


def measure_for(target: SpeedTarget, baseline: Baseline, latency: LatencyConfig | None) -> Measure:
    """The measurement a target names: paired ORT timing for a latency target, else the MACs ratio."""
    if target.latency_speedup is None:
        return MacsMeasure(baseline)
    lat = (latency or LatencyConfig()).model_copy(update={"enabled": True})
    return PairedOrt.start(baseline, lat, target.batch_size)


class Option(ABC):
    """A family's hook: one depth option, what it cuts and how it proposes candidates. ``first`` proposes,
    ``build`` makes the candidate (the model, and what the plan keeps of it), ``observe`` sees its
    measurement, ``next`` proposes again after a miss (None: this option stops), ``estimate`` scores the
    candidate the option offers."""

    depth: int = 0
    estimates: ClassVar[bool] = False  # whether ``estimate`` scores candidates (the log says when it did not)

    @abstractmethod
    def label(self, attempt: int) -> str:
        raise NotImplementedError

    @abstractmethod
    def first(self) -> Any:
        raise NotImplementedError

    @abstractmethod
    def build(self, proposal: Any) -> tuple[nn.Module, Any]:
        raise NotImplementedError

    def observe(self, cand: Candidate, model: nn.Module, measured: float | None) -> None:
        """A measured candidate (``measured``: its speedup before rounding, None when not timed), e.g. to refit
        a latency model."""
        return None

    @abstractmethod
    def next(self, proposal: Any, cand: Candidate, achieved: float) -> Any | None:
        raise NotImplementedError

    def estimate(self, cand: Candidate, model: nn.Module) -> None:
        """Score the candidate this option offers (e.g. its estimated accuracy); nothing by default."""
        return None

    def note(self, proposal: Any) -> str:
        """What the log line adds about ``proposal``."""
        return ""


Offer = tuple[Candidate, Any]  # a candidate and what the plan keeps of it
_Tried = tuple[Candidate, Any, nn.Module]


@dataclass
class Search:
    """One search: the band, the measurement, the log, and every candidate built."""

    band: Band
    measure: Measure
    log: Callable[[str], None] = lambda s: None
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def aim(self) -> float:
        return self.measure.aim(self.band)

    def achieved(self, cand: Candidate) -> float:
        return self.measure.achieved(cand)

    def offer(self, option: Option) -> Offer:
        """Propose, build and measure candidates of ``option`` until one lands in the band or the option stops;
        only the one it offers is estimated (an estimate is the costliest step, and a candidate outside the
        band is never chosen over one inside it)."""
        tried: list[_Tried] = []
        proposal, attempt = option.first(), 0
        while proposal is not None:
            model, keeps = option.build(proposal)
            cand = self._measured(option, model, attempt)
            achieved = self.achieved(cand)
            cand.in_band = self.band.contains(achieved)
            self.candidates.append(cand)
            tried.append((cand, keeps, model))
            nxt = None if cand.in_band else option.next(proposal, cand, achieved)
            if cand.in_band or (nxt is None and not self.measure.noisy):
                option.estimate(cand, model)
            self.log(f"candidate {cand.label}: {_line(cand, option.estimates)}{option.note(proposal)}")
            proposal, attempt = nxt, attempt + 1
        cand, keeps, model = self.kept(tried)
        if option.estimates and not cand.in_band and cand.est_kd is None:
            option.estimate(cand, model)
            self.log(f"candidate {cand.label} (the one this depth offers, outside the band): {_line(cand, True)}")
        return cand, keeps

    def _measured(self, option: Option, model: nn.Module, attempt: int) -> Candidate:
        cpu = copy.deepcopy(model).cpu().eval()
        macs = count_macs(cpu, self.measure.baseline.shape)
        ratio = round(self.measure.baseline.macs / max(macs, 1), 3)
        cand = Candidate(option.label(attempt), option.depth, macs, macs_ratio=ratio)
        option.observe(cand, model, self.measure.measure(cand, cpu))
        return cand

    def kept(self, tried: list[_Tried]) -> _Tried:
        """The candidate an option offers the choice: the one in the band; else the slowest that still reaches
        the target (an overshoot gives away accuracy, but one below the target can never be chosen); else the
        one closest to the aim."""
        in_band = [t for t in tried if t[0].in_band]
        if in_band:
            return in_band[0]
        reaching = [t for t in tried if self.achieved(t[0]) >= self.band.lo]
        if reaching:
            return min(reaching, key=lambda t: self.achieved(t[0]))
        return min(tried, key=lambda t: abs(self.achieved(t[0]) - self.aim))

    def choose(self, offers: list[Offer], score: Callable[[Candidate], float], hint: str) -> tuple[Offer, str | None]:
        """The offer with the lowest ``score`` among those in the band, else those reaching the target, else
        (noisy) those whose pairs straddle it; marked chosen, with a note when it is not in the band. None: an
        error naming the target, the best plan and ``hint`` (what the family could allow)."""
        lo = self.band.lo
        meeting = [o for o in offers if o[0].in_band] or [o for o in offers if self.achieved(o[0]) >= lo]
        within_noise = False
        if not meeting and self.measure.noisy:  # no median reached it, but some candidate's pairs straddle it
            meeting = [o for o in offers if o[0].spread and o[0].spread[1] >= lo and self.achieved(o[0]) >= 0.9 * lo]
            within_noise = bool(meeting)
        if not meeting:
            got = max((self.achieved(c) for c, _ in offers), default=None)
            best_s = "none was built" if got is None else f"the best plan is {got:.3g}x"
            raise DistillpruneError(
                f"the cuttable layers cannot reach the target {self.measure.what} {lo:g}x; {best_s} {hint}"
            )
        best = min(meeting, key=lambda o: score(o[0]))
        c = best[0]
        c.chosen = True
        note = None
        if within_noise and c.spread is not None:  # (every within-noise candidate has a spread)
            note = (
                f"no candidate's median speedup reached the target; the chosen one measured {c.speedup} "
                f"with pairs from {c.spread[0]} to {c.spread[1]}: the target is within this machine's "
                "timing noise (time it again on a quieter machine)"
            )
        elif not c.in_band:
            note = "no candidate landed inside the target band; the closest above the target was taken"
        self.log(f"chosen: candidate {c.label}: {_line(c, c.est_kd is not None)}" + (f" ({note})" if note else ""))
        return best, note


def _line(c: Candidate, estimates: bool) -> str:
    if c.est_kd is not None:
        # the teacher has fitted its training images, the estimate's: optimistic, but it ranks candidates alike
        est = f" est top-1 {c.est_top1} (on training images: optimistic) kd {c.est_kd}"
    else:
        est = " not estimated (outside the band)" if estimates else ""
    return f"speedup {c.speedup} macs x{c.macs_ratio}{est}"
