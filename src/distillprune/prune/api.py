"""``distillprune.prune_``: prune a model in place, optionally while distilling (the recipe's prune stages).

One verb for every model family: the config's type picks the family's structure (``prune.structure``):
``PruneConfig`` prunes a CNN's blocks and channels, ``TransformerPruneConfig`` an encoder's heads, FFN
neurons and layers."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from distillprune.core.checkpoint import ArchSpec
from distillprune.data.base import DataBundle
from distillprune.measure.latency import LatencyConfig
from distillprune.prune.cnn import refuse_named_width
from distillprune.prune.config import PruneConfig
from distillprune.prune.session import PruneSession, Trainer
from distillprune.prune.structure import config_of
from distillprune.train import distributed as ddp
from distillprune.train.config import RuntimeConfig, TrainingOptions
from distillprune.train.trainer import FitSettings, fit, resolve_device, spanned

__all__ = ["fit_trainer", "prune_", "refuse_named_width"]


def prune_(
    model: nn.Module,
    cfg: BaseModel | dict[str, Any],
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
) -> Any:
    """Prune ``model`` in place as the recipe's prune stages do; returns the family's report
    (:class:`PruneReport` for a CNN, ``TransformerPruneReport`` for an encoder).

    ``cfg``: a family's prune config or its dict (``{"width": {"ratio": 0.5}, "depth": {"blocks": 2}, "steps": 2,
    "epochs_per_step": 3, "target": {"latency_speedup": 2.0}}``; an encoder's ``{"heads": {"ratio": 0.25},
    "ffn": {"ratio": 0.5}, "layers": {"drop": 2}}``). With ``data`` it prunes while distilling: what to
    cut is scored on seeded training batches, and each step is followed by ``epochs_per_step`` epochs of KD
    from ``teacher`` (default: a frozen copy of ``model`` as it is now). Without data, ``example_inputs`` is
    the one calibration batch and nothing trains (one-shot pruning). ``spec`` (if given) receives the
    replayable history, so ``save_checkpoint`` can rebuild the model. ``seed`` seeds the calibration
    batches, ``train_seed`` (default ``seed``) the training between steps. Under ``torchrun`` rank 0 makes
    every decision (plan, scores, cuts) and the other ranks replay it.
    """
    conf: Any = config_of(cfg, PruneConfig)
    runtime = runtime or RuntimeConfig(progress=False, tensorboard=False)
    ddp.setup(resolve_device(runtime))  # under torchrun: decisions on rank 0, training on every rank
    trainer = None
    if data is not None and conf.epochs_per_step:
        trainer = fit_trainer(
            conf, data, runtime, seed if train_seed is None else train_seed, batch_size, crop_padding, hflip
        )
    session = PruneSession(
        model,
        conf,
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
    cfg: TrainingOptions,
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
