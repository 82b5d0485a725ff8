"""Distillation options: the ``distill`` block of a stage, and ``distillprune.distill``'s config."""

from __future__ import annotations

import inspect
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distillprune.core.config import StrictModel
from distillprune.core.registry import nearest
from distillprune.data.views import ViewsConfig
from distillprune.distill.losses import LOSSES
from distillprune.distill.schedule import build_term
from distillprune.errors import DistillpruneError
from distillprune.models.config import ModelConfig
from distillprune.train.config import TrainingOptions


class LossSpec(BaseModel):
    """``{name: kd, weight: 1.0, temperature: 4}``: the options are the loss's constructor arguments.

    The weight and the loss's schedulable options may be ramps over the stage:
    ``{name: kd, weight: {start: 0, end: 1}, temperature: {start: 8, end: 2, schedule: cosine}}``.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str
    weight: float | dict[str, Any] = Field(1.0, description="a number >= 0, or a ramp {start, end, schedule, fraction}")

    @model_validator(mode="before")
    @classmethod
    def _weight_is_a_number(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("weight"), bool):
            raise ValueError(f"loss '{data.get('name')}': weight expects a number, got {str(data['weight']).lower()}")
        return data

    @model_validator(mode="after")
    def _options(self) -> LossSpec:
        cls = LOSSES.get(LOSSES.check(self.name))
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        for key in self.model_extra or {}:
            if key not in params:
                raise ValueError(
                    f"loss '{self.name}' has no option '{key}'{nearest(key, params)}; "
                    f"options: {', '.join(params) or 'none'}"
                )
        for key, value in (self.model_extra or {}).items():
            check_option(self.name, key, value, inspect.signature(cls.__init__).parameters[key].default)
        if isinstance(self.weight, (int, float)) and self.weight < 0:
            raise ValueError(f"loss '{self.name}': weight must be >= 0, got {self.weight}")
        try:  # build it once: bad option values fail at validation, not at training
            build_term(self.spec())
        except (TypeError, DistillpruneError) as e:
            raise ValueError(f"loss '{self.name}': {e}") from None
        return self

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, **(self.model_extra or {})}


def check_option(loss: str, key: str, value: Any, default: Any) -> None:
    """A loss option given in a recipe: a finite number (also a ramp's ends), and a boolean only where the
    loss's ``default`` is one (``temperature: true`` is not 1)."""
    ends = [value.get("start"), value.get("end")] if isinstance(value, dict) else [value]
    for v in ends:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"loss '{loss}': {key} must be a finite number, got {v}")
        if isinstance(v, bool) and not isinstance(default, bool):
            raise ValueError(f"loss '{loss}': {key} expects a number, got {str(v).lower()} (a boolean)")


class DistillConfig(StrictModel):
    teacher: str | ModelConfig = Field(
        "auto",
        description="auto: the dense model before pruning; a checkpoint folder; or a model with its trained "
        "weights ({name: torchvision, kwargs: {arch: resnet18}, weights: r18.pt}, "
        "{python: my_net.py:MyNet, weights: ...})",
    )
    teachers: list[str | ModelConfig] | None = Field(
        None,
        description="multi-teacher: checkpoint folders, models with weights, or auto, logits averaged by "
        "teacher_weights",
    )
    teacher_weights: list[float] | None = Field(None, description="weights of the teachers' logits")
    mode: Literal["offline", "mutual"] = Field(
        "offline", description="mutual: the teacher trains too, each net distilling into the other (DML)"
    )
    peer: ModelConfig | None = Field(
        None, description="mutual: a fresh network to train with the student (default: the teacher itself)"
    )
    cache: bool = Field(False, description="compute the teacher's outputs once (no random augmentation)")
    views: ViewsConfig | None = Field(
        None,
        description="images: distil on two augmented views of every image (random resized crop, colour jitter, "
        "flip), the teacher and the student seeing the same views -- more of the teacher's function from few "
        "images (Beyer et al. 2022, consistent teaching); what self-supervised teachers were trained on",
    )
    fold_teacher: bool = Field(
        True,
        description="run a checked copy of the frozen teacher with its BatchNorm "
        "folded into the convolutions (faster, same outputs)",
    )
    compile_teacher: bool = Field(False, description="torch.compile that copy (no feature taps); pays on long runs")
    losses: list[LossSpec] = Field(default_factory=lambda: [LossSpec(name="kd")], min_length=1)

    @model_validator(mode="after")
    def _modes(self) -> DistillConfig:
        for t in self.teachers or [self.teacher]:
            if isinstance(t, ModelConfig):
                if t.checkpoint is None and t.weights is None:
                    raise ValueError("a teacher model needs its trained weights (weights: PATH) or a checkpoint")
                if t.head is not None:
                    raise ValueError("a teacher's classifier must come from its weights: drop head")
        if self.teachers is not None:
            if not self.teachers:
                raise ValueError("teachers: give at least one checkpoint folder (or auto)")
            if "teacher" in self.model_fields_set:
                raise ValueError("give either teacher or teachers, not both")
        if self.teacher_weights is not None:
            n = len(self.teachers or [self.teacher])
            if len(self.teacher_weights) != n:
                raise ValueError(f"teacher_weights has {len(self.teacher_weights)} weights for {n} teacher(s)")
            if any(w < 0 for w in self.teacher_weights) or sum(self.teacher_weights) <= 0:
                raise ValueError(f"teacher_weights must be >= 0 with a positive sum, got {self.teacher_weights}")
        if self.peer is not None and self.mode != "mutual":
            raise ValueError("peer is the second network of mode: mutual")
        if self.mode == "mutual":
            if self.cache:
                raise ValueError("mode: mutual trains the teacher, so its outputs cannot be cached (cache: false)")
            if self.views is not None:
                raise ValueError("views are for offline distillation; mode: mutual trains on the batches as they are")
            if self.teachers is not None:
                raise ValueError(
                    "mode: mutual trains one peer network; teachers (a frozen ensemble) is for offline mode"
                )
        if self.views is not None and self.cache:
            raise ValueError("cache computes the teacher's outputs once; views draw new images every step: drop one")
        return self

    def loss_specs(self) -> list[dict[str, Any]]:
        return [s.spec() for s in self.losses]


class DistillOptions(TrainingOptions):
    """``distillprune.distill``'s config (and the ``distill`` stage's): how long and how the student trains,
    the ``distill`` block (losses, teachers, mode: offline / mutual, cache), and born-again ``generations``."""

    epochs: float = Field(10, gt=0, description="training epochs (of each generation)")
    generations: int = Field(
        1,
        ge=1,
        description="born-again: each generation's student teaches the next, "
        "which restarts from a fresh initialisation",
    )
    distill: DistillConfig = Field(default_factory=DistillConfig)

    @model_validator(mode="after")
    def _generations(self) -> DistillOptions:
        if self.generations > 1 and self.distill.mode == "mutual":
            raise ValueError("generations (born-again) need an offline teacher; mode: mutual has none")
        return self
