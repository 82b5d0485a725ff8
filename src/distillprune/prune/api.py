"""``distillprune.prune_``: prune a model in place, optionally while distilling (the recipe's prune stages).

One verb for every model family: the config's type picks the family's structure (``prune.structure``):
``PruneConfig`` prunes a CNN's blocks and channels, ``TransformerPruneConfig`` an encoder's heads, FFN
neurons and layers."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from distillprune.core.checkpoint import ArchSpec, history_list
from distillprune.core.compat import legacy_shape, pop_known
from distillprune.core.history import HistoryOp
from distillprune.core.reporting import Details
from distillprune.data.base import DataBundle, Examples
from distillprune.prune.cnn import refuse_named_width
from distillprune.prune.config import PruneConfig
from distillprune.prune.session import PruneSession, legacy_context
from distillprune.prune.structure import config_of
from distillprune.train import distributed as ddp
from distillprune.train.context import Context, LoaderOptions, Trainer, fit_trainer
from distillprune.train.trainer import resolve_device

__all__ = ["fit_trainer", "prune_", "refuse_named_width"]


def _legacy(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any], str] | None:
    """``prune_(model, cfg, example_inputs, num_classes, *, data=, spec=, runtime=, latency=, batch_size=,
    seed=, train_seed=, crop_padding=, hflip=)``, the old shape."""
    args = tuple(args)
    old_positional = len(args) > 2 and torch.is_tensor(args[2])
    old = pop_known(kwargs, ("spec", "runtime", "train_seed", "crop_padding", "hflip"))
    if len(args) > 3:  # num_classes, positional
        kwargs["num_classes"] = args[3]
    if old_positional:
        kwargs["example_inputs"] = args[2]
        args = args[:2]
    if (
        not old
        and not old_positional
        and not any(k in kwargs for k in ("example_inputs", "num_classes", "latency", "batch_size", "seed"))
    ):
        return None
    said = [f"{k}=" for k in old]
    if "spec" in old:
        kwargs["history"] = old["spec"]
    translated = legacy_context(args, kwargs, 2)
    if translated is not None:
        args, kwargs, what = translated
        said.append(what)
    ctx: Context = kwargs.get("context") or Context()
    runtime = old.get("runtime") or ctx.runtime
    lo = ctx.loader
    loader = LoaderOptions(lo.batch_size, lo.seed, old.get("crop_padding", 0), old.get("hflip", False))
    kwargs["context"] = Context(runtime, loader, ctx.latency)
    data = args[2] if len(args) > 2 else kwargs.get("data")
    conf: Any = config_of(args[1] if len(args) > 1 else kwargs.get("cfg") or {}, PruneConfig)
    if "train_seed" in old and isinstance(data, DataBundle) and conf.epochs_per_step:
        # the training between steps seeded apart from the calibration batches
        train_loader = LoaderOptions(lo.batch_size, old["train_seed"], loader.crop_padding, loader.hflip)
        kwargs["trainer"] = fit_trainer(conf, data, Context(runtime, train_loader, ctx.latency), desc="prune")
    return (
        args,
        kwargs,
        "; ".join(said) + " (new shape: prune_(model, cfg, data, *, teacher, trainer, history, context))",
    )


@legacy_shape(_legacy)
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
    ``epochs_per_step`` epochs of KD from ``teacher`` (default: a frozen copy of ``model`` as it is now)
    through ``trainer`` (default: ``fit_trainer(cfg, data, context)``). With ``Examples(inputs,
    num_classes)`` the first batch is the one calibration batch and nothing trains (one-shot pruning).
    ``history`` (an ArchSpec or its list of ops) receives the replayable history, so ``save_checkpoint``
    can rebuild the model. ``context.loader.seed`` seeds the calibration batches and the default trainer.
    Under ``torchrun`` rank 0 makes every decision (plan, scores, cuts) and the other ranks replay it.
    """
    conf: Any = config_of(cfg or {}, PruneConfig)
    ctx = context or Context()
    ddp.setup(resolve_device(ctx.runtime))  # under torchrun: decisions on rank 0, training on every rank
    if trainer is None and isinstance(data, DataBundle) and conf.epochs_per_step:
        trainer = fit_trainer(conf, data, ctx, desc="prune")
    session = PruneSession(
        model, conf, data, teacher=teacher, trainer=trainer, history=history_list(history), context=ctx
    )
    return session.run()
