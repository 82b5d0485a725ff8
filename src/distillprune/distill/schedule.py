"""Schedules for loss weights and loss options (temperature, alpha, ...) over a training stage.

A recipe gives a number, or a ramp ``{start: 8, end: 2, schedule: cosine, fraction: 1.0}``: the
value moves from ``start`` to ``end`` over the first ``fraction`` of the stage's steps, then holds.
Progress is a pure function of the global step, so a resumed run sees the same values. The span
is one training run (``fit``): a distill stage's epochs, or, in a prune stage, each step's epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from distillprune.core.config import StrictModel, validate
from distillprune.distill.losses.base import LOSSES, DistillLoss


class Ramp(StrictModel):
    """A value that moves from ``start`` to ``end`` over the stage."""

    start: float
    end: float
    schedule: Literal["linear", "cosine"] = "linear"
    fraction: float = Field(1.0, gt=0, le=1, description="reach `end` after this share of the stage, then hold")

    def at(self, progress: float) -> float:
        t = min(max(progress / self.fraction, 0.0), 1.0)
        if self.schedule == "cosine":
            t = 0.5 * (1.0 - math.cos(math.pi * t))
        return self.start + (self.end - self.start) * t


def as_ramp(value: Any, where: str) -> Ramp | None:
    """A Ramp for a mapping (or a Ramp), None for a plain value."""
    if isinstance(value, Ramp):
        return value
    if isinstance(value, dict):
        return validate(Ramp, value, where=where)
    return None


@dataclass
class Term:
    """One weighted loss of an objective, with the ramps of its weight and options."""

    name: str
    loss: DistillLoss
    weight: float | Ramp = 1.0
    ramps: dict[str, Ramp] = field(default_factory=dict)

    def weight_at(self, progress: float) -> float:
        """Set the ramped options on the loss for this step; returns the weight."""
        for option, ramp in self.ramps.items():
            setattr(self.loss, option, ramp.at(progress))
        return self.weight.at(progress) if isinstance(self.weight, Ramp) else float(self.weight)


def build_term(spec: dict[str, Any]) -> Term:
    """``{name, weight, **options}`` -> Term; ramped options start at their start value.

    The loss is also built at the ramps' end values, so an end value the loss rejects (a
    temperature of 0, say) fails here, before training, not half-way through it.
    """
    spec = dict(spec)
    name = spec.pop("name")
    cls = LOSSES.get(name)
    weight: Any = spec.pop("weight", 1.0)
    wr = as_ramp(weight, f"losses.{name}.weight")
    if wr is not None and min(wr.start, wr.end) < 0:
        raise ValueError(f"loss '{name}': weight ramp must stay >= 0, got {wr.start} -> {wr.end}")
    ramps = {}
    for option, value in spec.items():
        r = as_ramp(value, f"losses.{name}.{option}")
        if r is None:
            continue
        if option not in cls.schedulable:
            raise ValueError(
                f"loss '{name}': option '{option}' cannot be scheduled; schedulable options: "
                f"{', '.join(cls.schedulable) or 'none'}"
            )
        ramps[option] = r
    start = {k: (ramps[k].start if k in ramps else v) for k, v in spec.items()}
    if ramps:
        cls(**{k: (ramps[k].end if k in ramps else v) for k, v in spec.items()})
    return Term(name, cls(**start), wr if wr is not None else float(weight), ramps)


class Clock:
    """The objective's position in the stage: set by ``begin_epoch``, advanced by each training step."""

    def __init__(self) -> None:
        self.step, self.total = 0, 0

    def begin_epoch(self, steps_per_epoch: int, epoch: int, epochs: int) -> None:
        self.step, self.total = epoch * steps_per_epoch, epochs * steps_per_epoch

    def now(self) -> float:
        """Progress in [0, 1] of the step about to run (the last step of the stage is at 1)."""
        p = self.step / max(self.total - 1, 1) if self.total else 0.0
        return min(p, 1.0)

    def tick(self) -> float:
        """``now()``, then advance."""
        p = self.now()
        self.step += 1
        return p
