"""``lowrank``: truncated-SVD factorization of Linear/Conv layers, then KD fine-tuning (an adapter over
``distillprune.lowrank_``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from distillprune.lowrank import LowRankConfig, lowrank_
from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig


class LowrankStage(StageConfig, LowRankConfig):
    """Truncated SVD of Linear (W = UV) and Conv (k x k conv with r filters + 1x1 conv) layers, rank per layer
    by kept `energy` or `ratio`, rounded up to `round_to` (8); layers where it would not save `min_saving`
    of their MACs are skipped and listed with the reason; then KD fine-tuning for `epochs`."""

    example: ClassVar[dict[str, Any]] = {"epochs": 1, "energy": 0.9, "round_to": 4}

    type: Literal["lowrank"]


@register_stage(LowrankStage)
def run_lowrank(st: LowrankStage, state: RunState, index: int) -> StageOutcome:
    """The verb on the run's model, teacher (resolved before the SVD) and checkpointing trainer."""
    report = lowrank_(
        state.model,
        st,
        state.data,
        teacher=state.teacher_for(st.distill),
        trainer=state.trainer(st, index, "lowrank"),
        history=state.spec,
        context=state.context(),
    )
    return StageOutcome(report)
