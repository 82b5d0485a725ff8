"""``train``: cross-entropy training of the current model; the result becomes the default KD teacher."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from distillprune.distill.distiller import CrossEntropy
from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig
from distillprune.train.config import TrainingOptions
from distillprune.train.report import TrainReport


class TrainStage(StageConfig, TrainingOptions):
    """Cross-entropy training; the result becomes the default KD teacher."""

    example: ClassVar[dict[str, Any]] = {"epochs": 1}

    keeps_layers: ClassVar[bool] = True
    measures_input: ClassVar[bool] = True
    type: Literal["train"]
    epochs: int = Field(..., ge=1)


@register_stage(TrainStage)
def run_train(st: TrainStage, state: RunState, index: int) -> StageOutcome:
    hist = state.fit(st, st.epochs, CrossEntropy(st.label_smoothing), index, "train", regime="scratch")
    state.set_teacher(state.model, state.spec)  # the trained dense model is the default teacher
    return StageOutcome(TrainReport.of(hist))
