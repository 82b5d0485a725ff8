"""``finetune``: train the current model, with KD from the dense teacher unless ``distill`` is null."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from distillprune.distill.config import DistillConfig
from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig
from distillprune.train.config import TrainingOptions
from distillprune.train.report import TrainReport


class FinetuneStage(StageConfig, TrainingOptions):
    """Fine-tuning with KD from the dense teacher (plain cross-entropy with `distill: null`)."""

    example: ClassVar[dict[str, Any]] = {"epochs": 1}

    keeps_layers: ClassVar[bool] = True
    type: Literal["finetune"]
    epochs: int = Field(..., ge=1)
    distill: DistillConfig | None = Field(default_factory=DistillConfig)


@register_stage(FinetuneStage)
def run_finetune(st: FinetuneStage, state: RunState, index: int) -> StageOutcome:
    objective = state.objective(st.distill, st.label_smoothing)
    history = state.fit(st, st.epochs, objective, index, "finetune")
    return StageOutcome(TrainReport.of(history, kd=st.distill is not None))
