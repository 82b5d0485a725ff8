"""``evaluate``: measure the current model without changing it."""

from __future__ import annotations

from typing import Literal

from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig


class EvaluateStage(StageConfig):
    """Measure only (accuracy, params, MACs, file size, latency)."""

    type: Literal["evaluate"]

    def changes_model(self) -> bool:
        return False


@register_stage(EvaluateStage)
def run_evaluate(st: EvaluateStage, state: RunState, index: int) -> StageOutcome:
    return StageOutcome()
