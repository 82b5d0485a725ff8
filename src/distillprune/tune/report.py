"""What a search found, as data: ``TuneReport`` (``tune.json``); the page renders from it (``tune.html``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distillprune.core.io import write_json

HOLDOUT = (
    "Trials were judged on a validation split carved from the training data (data.validation_split); "
    "the test set was evaluated once, for the best trial(s) only, after the search."
)


@dataclass
class TrialRecord:
    """One trial: its drawn values, its state, and what its run measured on the validation split."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    params: dict[str, Any]
    folder: str | None = None  # under <out>/trials/
    val_top1: float | None = None
    speedup: float | None = None  # measured, the trial's last row over its dense model
    latency_ms: float | None = None
    macs: int | None = None
    curve: list[float] = field(default_factory=list)  # per-epoch validation values (loss, or error)
    pruned_at: str | None = None
    seconds: float | None = None
    test_top1: float | None = None  # best trials only


@dataclass
class TuneReport:
    """The search: every trial, the Pareto-best ones, the chosen one and its test-set top-1."""

    recipe: str
    objectives: list[str]  # "top1" and optionally "speedup"
    sampler: str
    pruner: str
    budget_fraction: float
    validation_split: float
    speed_key: str
    trials: list[TrialRecord]
    best: list[int]  # trial numbers: the best trial, or the Pareto front of a two-objective search
    chosen: int | None  # the trial best.yaml holds
    importances: dict[str, float] | None = None
    importance_note: str = ""
    holdout: str = HOLDOUT
    files: dict[str, str] = field(default_factory=dict)

    def trial(self, number: int) -> TrialRecord:
        return next(t for t in self.trials if t.number == number)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        return write_json(Path(folder) / "tune.json", self.to_dict())

    def summary(self) -> str:
        """A few lines for the console."""
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.counts.items()))
        lines = [f"{len(self.trials)} trials ({counts}); objectives: {' + '.join(self.objectives)}"]
        for n in self.best:
            t = self.trial(n)
            mark = " (best.yaml)" if n == self.chosen else ""
            speed = f", {t.speedup:.2f}x measured" if t.speedup is not None else ""
            test = f", test top-1 {t.test_top1:.2f}%" if t.test_top1 is not None else ""
            lines.append(f"  trial {n}{mark}: validation top-1 {t.val_top1}%{speed}{test}")
        if len(self.best) > 1 and "tune.json" in self.files:  # the front's run folders on one plane
            trials = Path(self.files["tune.json"]).parent / "trials"
            runs = " ".join(str(trials / str(self.trial(n).folder)) for n in self.best)
            lines.append(f"  compare them: distillprune compare {runs} --out compare.html")
        return "\n".join(lines)
