"""The typed report of a plain training or fine-tuning stage."""

from __future__ import annotations

from dataclasses import dataclass

from distillprune.core.reporting import Details, details_type
from distillprune.train.config import TrainSummary


@details_type
@dataclass
class TrainReport(Details):
    """A training run: its summary, whether it distilled from a teacher, and the self-supervised method it
    trained with (None: cross-entropy or distillation)."""

    kind = "train"
    training: TrainSummary | None = None
    kd: bool = False
    ssl: str | None = None

    @classmethod
    def of(cls, history: list[dict], kd: bool = False, ssl: str | None = None) -> TrainReport:
        return cls(TrainSummary.of(history), kd, ssl)
