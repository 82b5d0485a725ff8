"""Pruning options of a recipe (the ``prune`` stage and ``distillprune.prune_``)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from distillprune.core.config import StrictModel


class WidthConfig(StrictModel):
    """Structured channel pruning that physically removes channels (Torch-Pruning dependency graph)."""

    ratio: float | None = Field(None, gt=0, lt=1, description="share of channels removed from each prunable "
                                                            "group (searched when the stage has a target)")
    importance: str = Field("l2", description="l1 | l2 | taylor | bn_scale")
    global_pruning: bool = Field(False, description="rank all groups together instead of a uniform ratio")
    round_to: int | None = Field(8, gt=0, description="round kept channels to the nearest multiple, at least one "
                                                            "(hardware-friendly)")
    ignore: list[str] = Field(default_factory=list, description="module names/patterns never pruned; "
                                                                 "the classifier is always kept")
    max_ratio: float = Field(0.9, gt=0, le=1, description="never remove more than this share of a layer")
    taylor_batches: int = Field(4, gt=0, description="batches of gradients for taylor importance")

    @field_validator("importance")
    @classmethod
    def _known(cls, v: str) -> str:
        from distillprune.prune.importance import IMPORTANCE

        IMPORTANCE.get(v)
        return v


class DepthConfig(StrictModel):
    """Remove whole residual blocks, chosen by the smallest KD-loss increase when skipped."""

    blocks: int = Field(..., ge=1, description="number of residual blocks to remove")
    calib_batches: int = Field(4, gt=0)


class UnstructuredConfig(StrictModel):
    """Magnitude pruning of individual weights with masks; made permanent at the end of the stage."""

    sparsity: float = Field(..., gt=0, lt=1)
    scope: Literal["global", "layer"] = "global"
    schedule: Literal["cubic", "oneshot"] = "cubic"


class PruneConfig(StrictModel):
    width: WidthConfig | None = None
    depth: DepthConfig | None = None
    unstructured: UnstructuredConfig | None = None

    @model_validator(mode="after")
    def _something(self) -> PruneConfig:
        if not (self.width or self.depth or self.unstructured):
            raise ValueError("prune needs at least one of width, depth, unstructured")
        if self.width and self.width.ratio is None:
            raise ValueError("width.ratio is required (no target to search it from)")
        if self.unstructured and (self.width or self.depth):
            raise ValueError("unstructured pruning goes in its own prune stage (after width/depth), "
                             "because masks do not survive channel removal")
        return self
