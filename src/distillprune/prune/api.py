"""``distillprune.prune_``: prune a model in place, optionally while distilling (the recipe's prune stages call it).

One verb for every model family: the config's type picks the family's structure (``prune.structure``):
``PruneConfig`` prunes a CNN's blocks and channels, ``TransformerPruneConfig`` an encoder's heads, FFN
neurons and layers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from torch import nn

from distillprune.core.checkpoint import ArchSpec, history_list
from distillprune.core.history import HistoryOp
from distillprune.core.reporting import Details
from distillprune.data.base import DataBundle, Examples
from distillprune.distill.distiller import snapshot
from distillprune.distill.modes import build_peer, resolve_teacher
from distillprune.prune.config import PruneConfig, SessionConfig
from distillprune.prune.session import PruneSession
from distillprune.prune.structure import config_of
from distillprune.train import distributed as ddp
from distillprune.train.context import Context
from distillprune.train.device import resolve_device
from distillprune.train.trainers import Trainer, fit_trainer

__all__ = ["prune_"]


def prune_(
    model: nn.Module,
    cfg: BaseModel | dict[str, Any] | None = None,
    data: DataBundle | Examples | None = None,
    *,
    teacher: nn.Module | None = None,
    trainer: Trainer | None = None,
    history: ArchSpec | list[HistoryOp] | None = None,
    context: Context | None = None,
) -> Details:
    """Prune ``model`` in place as the recipe's prune stages do; returns the family's report
    (:class:`PruneReport` for a CNN, ``TransformerPruneReport`` for an encoder).

    ``cfg``: a family's prune config or its dict (``{"width": {"ratio": 0.5}, "depth": {"blocks": 2}, "steps": 2,
    "epochs_per_step": 3, "target": {"latency_speedup": 2.0}}``; an encoder's ``{"heads": {"ratio": 0.25},
    "ffn": {"ratio": 0.5}, "layers": {"drop": 2}}``). With ``data`` (a DataBundle) it prunes while
    distilling: what to cut is scored on seeded training batches, and each step is followed by
    ``epochs_per_step`` epochs of KD through ``trainer`` (default: ``fit_trainer(cfg, data, context)``). With
    ``Examples(inputs, num_classes)`` the first batch is the one calibration batch and nothing trains (one-shot).
    ``teacher`` scores the cuts and teaches between them; default: the ``distill`` block's (``teacher: auto``:
    a frozen copy of ``model`` as it is now; a checkpoint folder; a model; ``teachers``: their weighted
    ensemble), and in mutual mode its named ``peer`` trains with the student (else a copy of the teacher does).
    ``history`` (an ArchSpec or its list of ops) receives the replayable history, so ``save_checkpoint`` can
    rebuild the model. ``context.loader.seed`` seeds the calibration batches, the peer and the default trainer.
    Under ``torchrun`` rank 0 makes every decision (plan, scores, cuts) and the other ranks replay it.
    """
    conf: SessionConfig = config_of(cfg or {}, PruneConfig)
    ctx = context or Context()
    ddp.setup(resolve_device(ctx.runtime))  # under torchrun: decisions on rank 0, training on every rank
    if trainer is None and isinstance(data, DataBundle) and conf.epochs_per_step:
        trainer = fit_trainer(conf, data, ctx, desc="prune")
    d, peer = conf.distill, None
    if d is not None and data is not None:
        shape, n = tuple(data.input_shape), data.num_classes
        if teacher is None and (d.teachers or d.teacher != "auto" or d.teacher_weights is not None):
            teacher = resolve_teacher(d, lambda: snapshot(model), n, shape)
        peer = build_peer(d, ctx.loader.seed, n or 0, shape)
    session = PruneSession(
        model, conf, data, teacher=teacher, peer=peer, trainer=trainer, history=history_list(history), context=ctx
    )
    return session.run()
