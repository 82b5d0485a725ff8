"""``distillprune.distill``: distil one or several teachers into a student, in place; mutual learning
(``distill.mode: mutual``) and born-again generations (``generations``), as the recipe's distill stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distillprune.core.batch import has_named_inputs, is_embedder
from distillprune.core.checkpoint import ArchSpec
from distillprune.core.config import validate
from distillprune.core.history import HistoryOp
from distillprune.core.reporting import Details, details_type
from distillprune.data.base import DataBundle
from distillprune.distill.config import DistillOptions
from distillprune.distill.distiller import snapshot
from distillprune.distill.ensemble import TeacherEnsemble
from distillprune.distill.modes import objective_for, reinitialised, teacher_of
from distillprune.distill.mutual import MutualDistiller
from distillprune.errors import DistillpruneError
from distillprune.train.config import TrainSummary
from distillprune.train.context import Context
from distillprune.train.trainer import evaluate
from distillprune.train.trainers import Trainer, fit_trainer


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
    model: nn.Module,
    cfg: DistillOptions | dict[str, Any] | None = None,
    data: DataBundle | None = None,
    *,
    teacher: nn.Module | list[nn.Module] | None = None,
    trainer: Trainer | None = None,
    history: ArchSpec | list[HistoryOp] | None = None,
    context: Context | None = None,
) -> DistillReport:
    """Distil ``teacher`` (default: the ``distill`` block's, ``auto`` being a frozen copy of ``model`` as it is
    now; a list: the mean logits of several) into ``model`` in place, as the recipe's distill stage does.

    ``cfg``: a ``DistillOptions`` or its dict (``{"epochs": 10, "optimizer": {"lr": 0.05}, "distill": {"losses":
    [{"name": "kd", "temperature": 4}], "mode": "mutual"}, "generations": 2}``). From a dict, what it leaves
    out follows the model: AdamW for a transformer with named inputs, else SGD (peak lr: ``train.policy``); the
    ``embedding`` loss for an embedder, else ``kd``. ``distill.mode: mutual``: a trainable copy of the
    teacher trains with the student (DML); ``generations`` > 1 (born-again): each generation's student
    teaches the next, which restarts from a fresh initialisation, in place (seeded by
    ``context.loader.seed``: rebuilt from ``history`` when it is the model's ArchSpec, else every layer's
    ``reset_parameters``). ``trainer``: default ``fit_trainer(cfg, data, context)``.
    """
    opts = _options(model, cfg)
    if data is None:
        raise DistillpruneError("distill trains the student: pass data (a DataBundle)")
    ctx = context or Context()
    train = trainer or fit_trainer(opts, data, ctx, desc="distill")
    if isinstance(teacher, (list, tuple)):
        teacher = TeacherEnsemble(list(teacher))
    if teacher is None:  # the distill block's teacher (auto: the model as it is now), or its mutual peer
        teacher = teacher_of(opts.distill, lambda: snapshot(model), ctx.loader.seed, data.num_classes, data.input_shape)
    assert teacher is not None  # a DistillConfig always names one
    frozen: nn.Module = teacher
    spec = history if isinstance(history, ArchSpec) else None
    records: list[dict[str, Any]] = []
    gens = []
    for g in range(1, opts.generations + 1):
        objective = objective_for(opts.distill, opts.label_smoothing, lambda t=frozen: t)  # type: ignore[misc]
        if g > 1:
            _reinitialise(model, ctx.loader.seed + g, spec)
        # a born-again generation restarts from fresh weights; the first trains the model it was given
        h = train(
            model, objective, opts.epochs, "train" if g == 1 else f"gen{g}", regime="finetune" if g == 1 else "scratch"
        )
        records += h
        gens.append({"generation": g, "top1": round(h[-1]["test_acc"], 2) if h else None})
        frozen = snapshot(model)
    report = DistillReport(
        [s.name for s in opts.distill.losses],
        opts.distill.mode,
        TrainSummary.of(records),
        generations=gens if opts.generations > 1 else None,
        history=records,
    )
    if isinstance(objective, MutualDistiller) and data.test.y is not None:
        report.peer_top1 = round(evaluate(objective.peer, data, runtime=ctx.runtime), 2)
    cache = getattr(objective, "cache", None)
    if cache is not None:
        report.teacher_cache_seconds = round(cache.seconds, 2)
    return report


@torch.no_grad()
def _reinitialise(model: nn.Module, seed: int, spec: ArchSpec | None) -> None:
    """Born-again: ``model`` restarts, in place, from a fresh initialisation of its architecture."""
    fresh = reinitialised(model, seed, spec)
    model.load_state_dict(fresh.state_dict())


def _options(model: nn.Module, cfg: DistillOptions | dict[str, Any] | None) -> DistillOptions:
    """A DistillOptions as given, or from its dict with the model's defaults for what it leaves out."""
    if isinstance(cfg, DistillOptions):
        return cfg
    raw = dict(cfg or {})
    name = "adamw" if has_named_inputs(model) else "sgd"
    given = raw.get("optimizer")
    if given is None or isinstance(given, dict):  # the lr it leaves out follows the regime (train.policy)
        raw["optimizer"] = {"name": name, **(given or {})}
    block = dict(raw.get("distill") or {})
    if "losses" not in block and is_embedder(model):
        block["losses"] = [{"name": "embedding"}]
    raw["distill"] = block
    return validate(DistillOptions, raw, where="distill options")


DEFAULT_LR = {"sgd": 0.05, "adamw": 2e-4}
