"""Weight-clustering options (``distillprune.cluster_`` and the ``cluster`` stage)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from distillprune.core.modules import LayerSelect
from distillprune.distill.config import DistillConfig
from distillprune.train.config import TrainingOptions


class ClusterConfig(TrainingOptions):
    """k-means weight sharing per layer (Deep Compression), centroids fine-tuned (``epochs``, with KD from the
    ``distill`` block), packed and entropy-coded."""

    k: int = Field(16, ge=2, le=256, description="clusters (shared values) per layer: 16 -> 4-bit indices")
    overrides: dict[str, int] = Field(default_factory=dict, description="per-layer k by module-name pattern")
    layers: LayerSelect = Field(default_factory=LayerSelect, description="layers to cluster; the rest stay fp32")
    init: Literal["linear", "density", "random"] = Field(
        "linear", description="centroid init; linear (evenly over [min, max]) works best in Deep Compression"
    )
    iterations: int = Field(30, ge=1, description="k-means (Lloyd) iterations")
    keep_zeros: bool = Field(True, description="pruned zeros stay exactly zero (a fixed centroid)")
    codec: Literal["lzma", "zlib"] = Field("lzma", description="entropy coder for the packed file")
    filename: str = Field("model.cluster.xz", description="the packed, compressed weights in the run folder")
    epochs: int = Field(0, ge=0, description="fine-tuning of the centroids (0: one-shot)")
    distill: DistillConfig | None = Field(default_factory=DistillConfig)

    @field_validator("overrides")
    @classmethod
    def _ks(cls, v: dict[str, int]) -> dict[str, int]:
        for pat, k in v.items():
            if not 2 <= k <= 256:
                raise ValueError(f"overrides[{pat!r}]: k must be in [2, 256], got {k}")
        return v
