"""``lowrank``: truncated-SVD factorization of Linear/Conv layers, then KD fine-tuning."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from distillprune.distill.config import DistillConfig
from distillprune.lowrank import LowRankConfig, lowrank_
from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig
from distillprune.train.config import TrainingOptions, TrainSummary


class LowrankStage(StageConfig, TrainingOptions, LowRankConfig):
    """Truncated SVD of Linear (W = UV) and Conv (k x k conv with r filters + 1x1 conv) layers, rank per layer
    by kept `energy` or `ratio`, rounded up to `round_to` (8); layers where it would not save `min_saving`
    of their MACs are skipped and listed with the reason; then KD fine-tuning for `epochs`."""

    example: ClassVar[dict[str, Any]] = {"epochs": 1, "energy": 0.9, "round_to": 4}

    type: Literal["lowrank"]
    epochs: int = Field(0, ge=0)
    distill: DistillConfig | None = Field(default_factory=DistillConfig)


@register_stage(LowrankStage)
def run_lowrank(st: LowrankStage, state: RunState, index: int) -> StageOutcome:
    objective = state.objective(st.distill, st.label_smoothing)  # the teacher is the model before SVD
    cfg = LowRankConfig.model_validate(st.model_dump(include=set(LowRankConfig.model_fields)))
    report = lowrank_(state.model, tuple(state.data.input_shape), cfg, state.spec.history)
    if st.epochs:
        report.training = TrainSummary.of(state.fit(st, st.epochs, objective, index, "lowrank"))
    return StageOutcome(report)
