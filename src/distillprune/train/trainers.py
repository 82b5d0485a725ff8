"""How a verb trains: a ``Trainer``, and the library's default one (``fit_trainer``).

``prune_``, ``distill``, ``quantize``, ``lowrank_`` and ``cluster_`` all take ``trainer=`` and
``context=``. A trainer is ``trainer(model, objective, epochs, tag, on_step=None, span=None) -> per-epoch
records``; it binds its own training options (optimizer, schedule, grad clip). The library's default is
``fit_trainer(opts, data, context)`` over the one loop (``train.trainer.fit``), no checkpoints; a recipe's
stage passes one that checkpoints every epoch for ``--resume`` (``pipeline.state.RunState.trainer``), so a
verb and its stage train through the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import nn

from distillprune.data.base import DataBundle
from distillprune.train import policy
from distillprune.train.config import Span, TrainingOptions
from distillprune.train.context import Context
from distillprune.train.policy import Regime
from distillprune.train.trainer import FitRun, fit

__all__ = ["Trainer", "fit_trainer"]


class Trainer(Protocol):
    """``trainer(model, objective, epochs, tag, on_step=None, span=None, regime="finetune") -> per-epoch
    records``: ``tag`` names the run inside the verb ("step1", "gen2", "qat", "train"; a stage's trainer
    checkpoints under it); ``on_step`` is called with the model after every optimizer step; ``span`` (a
    ``train.config.Span``) is passed only when the run is part of a longer one (prune steps); ``regime`` says
    where the model starts (``train.policy``: "scratch" for fresh weights), unless the training options name
    one."""

    def __call__(
        self,
        model: nn.Module,
        objective: nn.Module,
        epochs: float,
        tag: str,
        on_step: Callable[[nn.Module], None] | None = None,
        span: Span | None = None,
        regime: Regime = "finetune",
    ) -> list[dict]: ...


def fit_trainer(opts: TrainingOptions, data: DataBundle, context: Context | None = None, desc: str = "") -> Trainer:
    """The library's trainer: ``fit`` with ``opts``' optimizer, schedule and grad clip, the context's
    runtime and loader (batch size, seed, crop, flip), no checkpoints."""
    ctx = context or Context()

    def train(
        model: nn.Module,
        objective: nn.Module,
        epochs: float,
        tag: str,
        on_step: Callable[[nn.Module], None] | None = None,
        span: Span | None = None,
        regime: Regime = "finetune",
    ) -> list[dict]:
        settings = policy.settings(opts, epochs, regime, span)
        run = FitRun(on_step=on_step, desc=f"{desc}/{tag}" if desc else tag)
        return fit(model, data, settings, objective, context=ctx, run=run)

    return train
