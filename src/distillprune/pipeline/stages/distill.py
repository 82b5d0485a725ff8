"""``distill``: distil a teacher into the current model or into a new `student`; born-again generations
and mutual learning (an adapter over ``distillprune.distill``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from distillprune.distill.api import distill
from distillprune.distill.config import DistillOptions
from distillprune.models.config import ModelConfig
from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig


class DistillStage(StageConfig, DistillOptions):
    """Distillation into the current model or a new `student`: losses `kd` (optionally with logit standardisation),
    `fitnet` (automatic adapters), `aligned` (a pruned student's stage outputs on the teacher's kept channels, no
    adapters; in a prune stage), `mimic` (MiR: a compressed student's stage outputs and pre-pooling map matched to the
    teacher's, its classifier frozen), `at`, `rkd`, `pkt`, `dkd`, `dist`, `crd`, `ce`, and for encoders `hidden`
    (TinyBERT), `minilm` (self-attention relations), `embedding` (sentence embeddings), and for embedding models `seed`
    (similarity distributions over a queue of teacher embeddings, self-supervised), as weighted sums whose weights and
    temperatures can follow linear/cosine ramps; modes: `teachers: [...]` (weighted multi-teacher), `mode: mutual`
    (online, both nets train), `generations: N` (born-again), `cache: true` (teacher outputs computed once), label-free
    (`data.labels: false`)."""

    example: ClassVar[dict[str, Any]] = {"epochs": 1}

    keeps_layers: ClassVar[bool] = True
    type: Literal["distill"]
    epochs: int = Field(..., ge=1)
    student: ModelConfig | None = None


@register_stage(DistillStage)
def run_distill(st: DistillStage, state: RunState, index: int) -> StageOutcome:
    """The verb on the run's model (or a new ``student``), teacher and checkpointing trainer."""
    teacher = state.teacher_for(st.distill)  # resolved before a new student replaces the model
    cfg = st
    if st.student is not None:
        state.model, state.spec = state.new_model(st.student)
        if st.regime == "auto":  # a new student starts from fresh weights
            cfg = st.model_copy(update={"regime": "scratch"})
    report = distill(
        state.model,
        cfg,
        state.data,
        teacher=teacher,
        trainer=state.trainer(cfg, index, "distill"),
        history=state.spec,
        context=state.context(),
    )
    report.history = []  # the per-epoch records are the run's metrics.jsonl
    return StageOutcome(report)
