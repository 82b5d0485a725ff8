"""``distillprune.prune_``: prune a model in place, optionally while distilling (the recipe's prune stage)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from distillprune.core.batch import has_named_inputs
from distillprune.core.checkpoint import ArchSpec
from distillprune.core.config import validate
from distillprune.data.base import DataBundle
from distillprune.errors import DistillpruneError
from distillprune.measure.latency import LatencyConfig
from distillprune.prune.config import PruneConfig
from distillprune.prune.session import PruneReport, PruneSession, Trainer
from distillprune.train import distributed as ddp
from distillprune.train.config import RuntimeConfig
from distillprune.train.trainer import FitSettings, fit, resolve_device, spanned

#: config type -> verb, for families that prune their own structures (``transformers`` registers
#: ``TransformerPruneConfig``); ``prune_`` hands such a config (or a dict of its keys) to that verb
PRUNERS: dict[type[BaseModel], Callable[..., Any]] = {}


def _family(cfg: PruneConfig | BaseModel | dict[str, Any]) -> Callable[..., Any] | None:
    for cls, verb in PRUNERS.items():
        if isinstance(cfg, cls):
            return verb
        if isinstance(cfg, dict) and set(cfg) - set(PruneConfig.model_fields) and set(cfg) <= set(cls.model_fields):
            return verb
    return None


def prune_(
    model: nn.Module,
    cfg: PruneConfig | dict[str, Any],
    example_inputs: torch.Tensor | None = None,
    num_classes: int | None = None,
    *,
    teacher: nn.Module | None = None,
    data: DataBundle | None = None,
    spec: ArchSpec | None = None,
    runtime: RuntimeConfig | None = None,
    latency: LatencyConfig | None = None,
    batch_size: int = 64,
    seed: int = 0,
    train_seed: int | None = None,
    crop_padding: int = 0,
    hflip: bool = False,
) -> PruneReport:
    """Prune ``model`` in place as the recipe's ``prune`` stage does; returns a :class:`PruneReport`.

    ``cfg``: a PruneConfig or its dict (``{"width": {"ratio": 0.5}, "depth": {"blocks": 2}, "steps": 2,
    "epochs_per_step": 3, "target": {"latency_speedup": 2.0}}``). With ``data`` it prunes while distilling:
    blocks and Taylor importance are scored on seeded training batches, and each step is followed by
    ``epochs_per_step`` epochs of KD from ``teacher`` (default: a frozen copy of ``model`` as it is now).
    Without data, ``example_inputs`` is the one calibration batch and nothing trains (one-shot pruning).
    ``spec`` (if given) receives the replayable history, so ``save_checkpoint`` can rebuild the model.
    ``seed`` seeds the calibration batches, ``train_seed`` (default ``seed``) the training between steps.
    """
    verb = _family(cfg)
    if verb is not None:  # e.g. heads / ffn / layers of a transformer
        return verb(
            model,
            cfg,
            example_inputs,
            num_classes,
            teacher=teacher,
            data=data,
            spec=spec,
            runtime=runtime,
            latency=latency,
            batch_size=batch_size,
            seed=seed,
            train_seed=train_seed,
        )
    cfg = cfg if isinstance(cfg, PruneConfig) else validate(PruneConfig, cfg, where="prune config")
    refuse_named_width(model, cfg)
    runtime = runtime or RuntimeConfig(progress=False, tensorboard=False)
    ddp.setup(resolve_device(runtime))  # under torchrun: decisions on rank 0, training on every rank
    trainer = None
    if data is not None and cfg.epochs_per_step:
        trainer = fit_trainer(
            cfg, data, runtime, seed if train_seed is None else train_seed, batch_size, crop_padding, hflip
        )
    session = PruneSession(
        model,
        cfg,
        data=data,
        teacher=teacher,
        example_inputs=example_inputs,
        num_classes=num_classes,
        history=spec.history if spec is not None else None,
        trainer=trainer,
        latency=latency,
        device=resolve_device(runtime),
        batch_size=batch_size,
        seed=seed,
    )
    return session.run()


def fit_trainer(
    cfg: PruneConfig,
    data: DataBundle,
    runtime: RuntimeConfig,
    seed: int,
    batch_size: int,
    crop_padding: int = 0,
    hflip: bool = False,
) -> Trainer:
    """The session's trainer over the library's ``fit`` (no checkpoints)."""

    def train(model, objective, epochs, tag, on_step, span=None):  # type: ignore[no-untyped-def]
        settings = FitSettings(epochs, cfg.optimizer, cfg.schedule, cfg.grad_clip, *spanned(span))
        return fit(
            model,
            data,
            settings,
            objective,
            runtime=runtime,
            seed=seed,
            batch_size=batch_size,
            crop_padding=crop_padding,
            hflip=hflip,
            on_step=on_step,
            desc=f"prune/{tag}",
        )

    return train


def refuse_named_width(model: nn.Module, cfg: PruneConfig) -> None:
    """Channel (width) and residual-block (depth) pruning do not fit encoders with named inputs: their Q/K/V
    would lose columns while the head count stays, and their layers are no residual blocks."""
    if has_named_inputs(model) and (cfg.width is not None or cfg.depth is not None):
        raise DistillpruneError(
            "width/depth pruning does not fit a transformer with named inputs: prune its "
            "heads / ffn / layers instead (a prune_transformer stage, or prune_(model, "
            "{'heads': {'ratio': ...}, 'ffn': {'ratio': ...}, 'layers': {'drop': ...}}, data=...))"
        )
