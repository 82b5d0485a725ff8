"""Low-rank factorization options (the ``lowrank`` stage)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from distillprune.core.modules import LayerSelect
from distillprune.distill.config import DistillConfig
from distillprune.train.config import TrainingOptions


class LowRankConfig(TrainingOptions):
    """Truncated SVD of Linear and Conv2d weights; the rank per layer from kept energy or a ratio; then
    ``epochs`` of fine-tuning with KD from the ``distill`` block."""

    rank_by: Literal["energy", "ratio"] = Field(
        "energy", description="energy: keep a share of sum(sigma^2); ratio: keep a share of the full rank"
    )
    energy: float = Field(0.9, gt=0, le=1, description="rank_by=energy: kept share of the squared singular values")
    ratio: float = Field(0.5, gt=0, lt=1, description="rank_by=ratio: rank = ratio x full rank")
    round_to: int = Field(8, gt=0, description="round ranks up to a multiple (hardware-friendly)")
    min_saving: float = Field(0.1, ge=0, lt=1, description="skip a layer whose MACs would drop by less than this")
    layers: LayerSelect = Field(default_factory=LayerSelect, description="layers to factorize (Linear, Conv2d)")
    overrides: dict[str, int | float] = Field(
        default_factory=dict,
        description="per-layer pattern: an int is a fixed rank, a float the energy/ratio",
    )
    epochs: int = Field(0, ge=0, description="KD fine-tuning after the factorization (0: none)")
    distill: DistillConfig | None = Field(default_factory=DistillConfig)

    @field_validator("overrides")
    @classmethod
    def _values(cls, v: dict[str, int | float]) -> dict[str, int | float]:
        for k, x in v.items():
            if isinstance(x, bool) or (isinstance(x, int) and x < 1) or (isinstance(x, float) and not 0 < x <= 1):
                raise ValueError(f"overrides[{k!r}]: an int rank >= 1 or a float share in (0, 1], got {x!r}")
        return v
