"""``evaluate``: measure the current model without changing it."""

from __future__ import annotations

from typing import ClassVar, Literal

from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig


class EvaluateStage(StageConfig):
    """Measure only (accuracy, params, MACs, file size, latency; kNN and linear-probe top-1 with a `probe`)."""

    keeps_layers: ClassVar[bool] = True
    measures_input: ClassVar[bool] = True
    type: Literal["evaluate"]

    def changes_model(self) -> bool:
        return False


@register_stage(EvaluateStage)
def run_evaluate(st: EvaluateStage, state: RunState, index: int) -> StageOutcome:
    return StageOutcome()
