"""``prune_transformer``: prune an encoder's heads, FFN neurons and layers while distilling
(``transformers.TransformerPruneSession``), with the pipeline's checkpointing trainer."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig
from distillprune.transformers.config import TransformerPruneConfig
from distillprune.transformers.session import TransformerPruneSession


class PruneTransformerStage(StageConfig, TransformerPruneConfig):
    """Hugging Face encoders (`model.source: hf`): `steps` times remove attention heads (`heads.ratio`, ranked
    globally by Fisher mask importance) and FFN neurons (`ffn.ratio`, rounded to `round_to` 64), dropping
    `layers.drop` whole layers (smallest KD-loss increase) on the first step, optionally re-fit the
    attention output and FFN down projections to the dense outputs by least squares (`recovery`), then train
    `epochs_per_step` with KD from the unpruned model (AdamW; `embedding` loss for embedders, `kd` for
    classifiers); `target` searches layers x width for a measured speedup."""

    example: ClassVar[dict[str, Any]] = {
        "heads": {"ratio": 0.5},
        "ffn": {"ratio": 0.5, "round_to": 8},
        "epochs_per_step": 1,
    }
    requires: ClassVar[str] = "transformers"

    type: Literal["prune_transformer"]


@register_stage(PruneTransformerStage)
def run_prune_transformer(st: PruneTransformerStage, state: RunState, index: int) -> StageOutcome:
    teacher = state.resolve_teacher(st.distill) if st.distill else None

    def trainer(model, objective, epochs, tag, on_step):  # type: ignore[no-untyped-def]
        return state.fit(st, epochs, objective, index, "prune_transformer", sub=tag, on_step=on_step)

    session = TransformerPruneSession(
        state.model,
        st,
        data=state.data,
        teacher=teacher,
        history=state.spec.history,
        trainer=trainer,
        latency=state.recipe.measure,
        device=state.device,
        batch_size=state.recipe.data.batch_size,
        seed=state.recipe.seed,
    )
    return StageOutcome(session.run())
