"""``train``: cross-entropy (or self-supervised, ``ssl``) training of the current model; the result becomes the
default KD teacher."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig
from distillprune.ssl.config import SSLOptions
from distillprune.train.config import TrainingOptions
from distillprune.train.report import TrainReport


class TrainStage(StageConfig, TrainingOptions, SSLOptions):
    """Cross-entropy training, or self-supervised without labels (`ssl`: `simclr`, `byol` on two augmented
    views of every image, `mlm` for Hugging Face encoders; the heads are not exported); the result becomes
    the default KD teacher."""

    example: ClassVar[dict[str, Any]] = {"epochs": 1}

    keeps_layers: ClassVar[bool] = True
    measures_input: ClassVar[bool] = True
    type: Literal["train"]
    epochs: int = Field(..., ge=1)


@register_stage(TrainStage)
def run_train(st: TrainStage, state: RunState, index: int) -> StageOutcome:
    objective = state.objective(None, st.label_smoothing, ssl=st.ssl)  # cross-entropy without ssl
    hist = state.fit(st, st.epochs, objective, index, "train", regime="scratch")
    state.set_teacher(state.model, state.spec)  # the trained dense model is the default teacher
    return StageOutcome(TrainReport.of(hist, ssl=st.ssl.method if st.ssl else None))
