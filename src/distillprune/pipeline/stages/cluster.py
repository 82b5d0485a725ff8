"""``cluster``: k-means weight sharing per layer, centroids fine-tuned with KD; writes the packed file."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from distillprune.cluster import ClusterConfig, ClusterOp, ClusterReport, WeightClustering, load_packed, save_packed
from distillprune.cluster import sizes as packed_sizes
from distillprune.core.reporting import Deployed
from distillprune.distill.config import DistillConfig
from distillprune.errors import CompressionError
from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig
from distillprune.train.config import TrainingOptions, TrainSummary


class ClusterStage(StageConfig, TrainingOptions, ClusterConfig):
    """Deep-Compression weight sharing: k-means per layer (`k` 16/32/256), centroids fine-tuned with KD for
    `epochs`, pruned zeros kept zero; the packed file (indices + codebooks, lzma/zlib) is written and its
    size reported next to the dense size."""

    example: ClassVar[dict[str, Any]] = {"epochs": 1, "k": 16}

    type: Literal["cluster"]
    epochs: int = Field(0, ge=0)
    distill: DistillConfig | None = Field(default_factory=DistillConfig)


@register_stage(ClusterStage)
def run_cluster(st: ClusterStage, state: RunState, index: int) -> StageOutcome:
    cfg = ClusterConfig.model_validate(st.model_dump(include=set(ClusterConfig.model_fields)))
    objective = state.objective(st.distill, st.label_smoothing)
    wc = WeightClustering(state.model, cfg)
    ks = wc.apply()
    hist = state.fit(st, st.epochs, objective, index, "cluster", on_step=wc.keep_zero) if st.epochs else []
    clustered = wc.finalize()
    state.spec.history.append(ClusterOp(cfg.k, len(ks)))
    sd = {k: v.detach().cpu() for k, v in state.model.state_dict().items()}
    path = state.output_path(cfg.filename, f"stages.{index - 1}.filename")
    if path is not None:
        info = save_packed(path, sd, clustered, cfg.codec)
        back = load_packed(path)
        if any(not np.array_equal(back[k].numpy(), sd[k].numpy()) for k in sd):
            raise CompressionError(f"{cfg.filename}: the packed weights do not round-trip")
        artefact = f"{cfg.filename} ({cfg.codec})"
    else:
        _, info = packed_sizes(sd, clustered)
        info = {**info, "codec": cfg.codec, "file_bytes": info[f"packed_{cfg.codec}_bytes"]}
        artefact = f"packed ({cfg.codec})"
    report = ClusterReport(
        cfg.k,
        clustered,
        sum(wc.zero_slot.values()),
        info,
        round(info["dense_fp32_bytes"] / info["file_bytes"], 2),
        TrainSummary.of(hist),
    )
    return StageOutcome(report, Deployed(artefact, info["file_bytes"]))
