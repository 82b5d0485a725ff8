"""``finetune``: train the current model, with KD from the dense teacher unless ``distill`` is null (or
self-supervised, ``ssl``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from distillprune.distill.config import DistillConfig
from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig
from distillprune.ssl.config import SSLOptions
from distillprune.train.config import TrainingOptions
from distillprune.train.report import TrainReport


class FinetuneStage(StageConfig, TrainingOptions, SSLOptions):
    """Fine-tuning with KD from the dense teacher (plain cross-entropy with `distill: null`; self-supervised,
    without labels or teacher, with `ssl`)."""

    example: ClassVar[dict[str, Any]] = {"epochs": 1}

    keeps_layers: ClassVar[bool] = True
    type: Literal["finetune"]
    epochs: int = Field(..., ge=1)
    distill: DistillConfig | None = Field(default_factory=DistillConfig)


@register_stage(FinetuneStage)
def run_finetune(st: FinetuneStage, state: RunState, index: int) -> StageOutcome:
    objective = state.objective(None if st.ssl else st.distill, st.label_smoothing, ssl=st.ssl)
    history = state.fit(st, st.epochs, objective, index, "finetune")
    ssl = st.ssl.method if st.ssl else None
    return StageOutcome(TrainReport.of(history, kd=st.distill is not None and ssl is None, ssl=ssl))
