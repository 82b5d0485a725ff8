"""``distill``: distil a teacher into the current model or into a new `student`; born-again generations."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from torch import nn

from distillprune.distill.api import DistillReport
from distillprune.distill.config import DistillConfig
from distillprune.distill.distiller import snapshot
from distillprune.distill.modes import reinitialised
from distillprune.distill.mutual import MutualDistiller
from distillprune.models.config import ModelConfig
from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig
from distillprune.train.config import TrainingOptions, TrainSummary
from distillprune.train.trainer import evaluate


class DistillStage(StageConfig, TrainingOptions):
    """Distillation into the current model or a new `student`: losses `kd` (optionally with logit
    standardisation), `fitnet` (automatic adapters), `aligned` (a pruned student's stage outputs on the
    teacher's kept channels, no adapters; in a prune stage), `at`, `rkd`, `pkt`, `dkd`, `dist`, `crd`, `ce`, and for
    encoders `hidden` (TinyBERT), `minilm` (self-attention relations), `embedding` (sentence embeddings), as
    weighted sums whose weights and temperatures can follow linear/cosine ramps; modes: `teachers: [...]`
    (weighted multi-teacher), `mode: mutual` (online, both nets train), `generations: N` (born-again),
    `cache: true` (teacher outputs computed once), label-free (`data.labels: false`)."""

    example: ClassVar[dict[str, Any]] = {"epochs": 1}

    keeps_layers: ClassVar[bool] = True
    type: Literal["distill"]
    epochs: int = Field(..., ge=1)
    generations: int = Field(
        1,
        ge=1,
        description="born-again: each generation's student teaches the next, "
        "which restarts from a fresh initialisation",
    )
    distill: DistillConfig = Field(default_factory=DistillConfig)
    student: ModelConfig | None = None

    @model_validator(mode="after")
    def _generations(self) -> DistillStage:
        if self.generations > 1 and self.distill.mode == "mutual":
            raise ValueError("generations (born-again) need an offline teacher; mode: mutual has none")
        return self


@register_stage(DistillStage)
def run_distill(st: DistillStage, state: RunState, index: int) -> StageOutcome:
    """Distil; with ``generations`` > 1 (born-again), each generation's student teaches the next one."""
    teacher: nn.Module | None = None
    hist: list[dict[str, Any]] = []
    gens = []
    for g in range(1, st.generations + 1):
        objective = state.objective(st.distill, st.label_smoothing, teacher=teacher)
        if g == 1 and st.student is not None:
            state.model, state.spec = state.new_model(st.student)
        elif g > 1:
            state.model = reinitialised(state.model, state.recipe.seed + g, state.spec)
        h = state.fit(st, st.epochs, objective, index, "distill", sub="train" if g == 1 else f"gen{g}")
        hist += h
        gens.append({"generation": g, "top1": round(h[-1]["test_acc"], 2) if h else None})
        teacher = snapshot(state.model)
    report = DistillReport(
        [s.name for s in st.distill.losses],
        st.distill.mode,
        TrainSummary.of(hist),
        generations=gens if st.generations > 1 else None,
    )
    if isinstance(objective, MutualDistiller) and state.data.test.y is not None:
        report.peer_top1 = round(evaluate(objective.peer, state.data, runtime=state.recipe.runtime), 2)
    cache = getattr(objective, "cache", None)
    if cache is not None:
        report.teacher_cache_seconds = round(cache.seconds, 2)
    return StageOutcome(report)
