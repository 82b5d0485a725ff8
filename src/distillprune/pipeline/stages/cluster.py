"""``cluster``: k-means weight sharing per layer, centroids fine-tuned with KD; writes the packed file (an
adapter over ``distillprune.cluster_``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from distillprune.cluster import ClusterConfig, cluster_
from distillprune.core.reporting import Deployed
from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig


class ClusterStage(StageConfig, ClusterConfig):
    """Deep-Compression weight sharing: k-means per layer (`k` 16/32/256), centroids fine-tuned with KD for
    `epochs`, pruned zeros kept zero; the packed file (indices + codebooks, lzma/zlib) is written and its
    size reported next to the dense size."""

    example: ClassVar[dict[str, Any]] = {"epochs": 1, "k": 16}

    type: Literal["cluster"]


@register_stage(ClusterStage)
def run_cluster(st: ClusterStage, state: RunState, index: int) -> StageOutcome:
    """The verb on the run's model, teacher and checkpointing trainer; the packed file in the run folder."""
    path = state.output_path(st.filename, f"stages.{index - 1}.filename")
    report = cluster_(
        state.model,
        st,
        state.data,
        teacher=state.teacher_for(st.distill),
        trainer=state.trainer(st, index, "cluster"),
        history=state.spec,
        context=state.context(),
        out=path,
    )
    artefact = f"{st.filename} ({st.codec})" if path is not None else f"packed ({st.codec})"
    return StageOutcome(report, Deployed(artefact, report.sizes["file_bytes"]))
