"""``distillprune.distill``: distil one or several teachers into a student, in place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from distillprune.core.batch import has_named_inputs, is_embedder
from distillprune.core.config import validate
from distillprune.core.reporting import Details, details_type
from distillprune.data.base import DataBundle
from distillprune.distill.distiller import Distiller
from distillprune.distill.ensemble import TeacherEnsemble
from distillprune.train.config import OptimizerConfig, RuntimeConfig, ScheduleConfig, TrainSummary
from distillprune.train.trainer import FitSettings, fit


@details_type
@dataclass
class DistillReport(Details):
    """What a distillation run did (one record per epoch in ``history``)."""

    kind = "distill"
    losses: list[str] = field(default_factory=list)
    mode: str = "offline"
    training: TrainSummary | None = None
    generations: list[dict[str, Any]] | None = None  # born-again: top-1 of each generation
    peer_top1: float | None = None  # mutual: the peer's top-1
    teacher_cache_seconds: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def distill(
    student: nn.Module,
    teacher: nn.Module | list[nn.Module],
    data: DataBundle,
    epochs: int = 10,
    losses: list[dict[str, Any]] | None = None,
    lr: float | None = None,
    batch_size: int = 64,
    runtime: RuntimeConfig | None = None,
    seed: int = 0,
    cache: bool = False,
    optimizer: str | OptimizerConfig | dict[str, Any] = "auto",
    schedule: str | ScheduleConfig | dict[str, Any] = "onecycle",
    grad_clip: float | None = None,
    crop_padding: int = 0,
    hflip: bool = False,
) -> DistillReport:
    """Distil ``teacher`` (or the mean logits of a list of teachers) into ``student`` in place (Hinton KD
    by default; ``embedding`` for an embedder). ``optimizer``: "auto" (AdamW for a transformer with named
    inputs, else SGD) | "sgd" | "adamw" or an OptimizerConfig / its dict (``lr`` overrides its learning rate;
    defaults: SGD 0.05, AdamW 2e-4). ``cache``: compute the teacher's outputs once."""
    if isinstance(teacher, (list, tuple)):
        teacher = TeacherEnsemble(teacher)
    if optimizer == "auto":
        optimizer = "adamw" if has_named_inputs(student) else "sgd"
    opt = _optimizer(optimizer, lr)
    sched = (
        schedule
        if isinstance(schedule, ScheduleConfig)
        else validate(ScheduleConfig, {"name": schedule} if isinstance(schedule, str) else schedule, where="schedule")
    )
    specs = losses or [{"name": "embedding" if is_embedder(student) else "kd"}]
    objective = Distiller.from_specs(teacher, specs, cache=cache)
    history = fit(
        student,
        data,
        FitSettings(epochs, opt, sched, grad_clip),
        objective,
        runtime=runtime or RuntimeConfig(progress=False),
        seed=seed,
        batch_size=batch_size,
        crop_padding=crop_padding,
        hflip=hflip,
    )
    return DistillReport(
        [s["name"] for s in specs],
        training=TrainSummary.of(history),
        history=history,
        teacher_cache_seconds=None if objective.cache is None else round(objective.cache.seconds, 2),
    )


DEFAULT_LR = {"sgd": 0.05, "adamw": 2e-4}


def _optimizer(optimizer: str | OptimizerConfig | dict[str, Any], lr: float | None) -> OptimizerConfig:
    if isinstance(optimizer, OptimizerConfig):
        return optimizer if lr is None else optimizer.model_copy(update={"lr": lr})
    raw: dict[str, Any] = {"name": optimizer} if isinstance(optimizer, str) else dict(optimizer)
    if lr is not None:
        raw["lr"] = lr
    raw.setdefault("lr", DEFAULT_LR.get(str(raw.get("name", "sgd")), 0.05))
    return validate(OptimizerConfig, raw, where="optimizer")
