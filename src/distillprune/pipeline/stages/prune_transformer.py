"""``prune_transformer``: prune an encoder's heads, FFN neurons and layers while distilling
(``prune.PruneSession`` with the encoder's structure), with the pipeline's checkpointing trainer."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from distillprune.pipeline.stages.prune import run_session
from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig
from distillprune.transformers.config import TransformerPruneConfig


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
    return run_session(st, state, index)
