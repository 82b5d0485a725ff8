"""``prune``: prune while distilling (``prune.PruneSession``), with the pipeline's checkpointing trainer."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from distillprune.pipeline.state import RunState
from distillprune.prune.api import refuse_named_width
from distillprune.prune.config import PruneConfig
from distillprune.prune.session import PruneSession
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig


class PruneStage(StageConfig, PruneConfig):
    """`steps` times: prune a little (`depth`: remove residual blocks chosen by the smallest KD-loss
     increase; `width`: Torch-Pruning dependency-graph channel removal, importance `l1`/`l2`/`taylor`/`bn_scale`
    , uniform or global, `round_to: 8` by default; or `unstructured`: global/layer magnitude
     masks on a cubic schedule), `recovery` re-fits the layers each cut disturbed (least squares to the dense
     outputs on calibration images, or data-free bias compensation), then train `epochs_per_step` with KD from
     the dense teacher; `target` searches the plan that reaches a MACs ratio or a measured speedup, comparing
     candidates after recovery (on by default with a target)."""

    example: ClassVar[dict[str, Any]] = {"width": {"ratio": 0.5, "round_to": 4}, "epochs_per_step": 1}

    type: Literal["prune"]


@register_stage(PruneStage)
def run_prune(st: PruneStage, state: RunState, index: int) -> StageOutcome:
    refuse_named_width(state.model, st)
    teacher = state.resolve_teacher(st.distill) if st.distill else None  # None: the unpruned self

    def trainer(model, objective, epochs, tag, on_step):  # type: ignore[no-untyped-def]
        return state.fit(st, epochs, objective, index, "prune", sub=tag, on_step=on_step)

    peer = state.peer(st.distill) if st.distill else None
    session = PruneSession(
        state.model,
        st,
        data=state.data,
        teacher=teacher,
        peer=peer,
        history=state.spec.history,
        trainer=trainer,
        latency=state.recipe.measure,
        device=state.device,
        batch_size=state.recipe.data.batch_size,
        seed=state.recipe.seed,
    )
    return StageOutcome(session.run())
