"""What every verb shares besides its model, config and data: where it runs (``Context``), how it reads
training batches (``LoaderOptions``) and how it trains (a ``Trainer``).

``prune_``, ``distill``, ``quantize``, ``lowrank_`` and ``cluster_`` all take ``trainer=`` and
``context=``. A trainer is ``trainer(model, objective, epochs, tag, on_step=None, span=None) -> per-epoch
records``; it binds its own training options (optimizer, schedule, grad clip). The library's default is
``fit_trainer(opts, data, context)`` over the one loop (``train.trainer.fit``), no checkpoints; a recipe's
stage passes one that checkpoints every epoch for ``--resume`` (``pipeline.state.RunState.trainer``), so a
verb and its stage train through the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from distillprune.data.base import DataBundle
from distillprune.measure.latency import LatencyConfig
from distillprune.train import policy
from distillprune.train.config import RuntimeConfig, Span, TrainingOptions
from distillprune.train.policy import Regime
from distillprune.train.trainer import fit

__all__ = ["Context", "LoaderOptions", "Trainer", "fit_trainer"]

#: ``trainer(model, objective, epochs, tag, on_step=None, span=None, regime="finetune") -> per-epoch records``:
#: ``tag`` names the run inside the verb ("step1", "gen2", "qat", "train"; a stage's trainer checkpoints under
#: it); ``span`` (a ``train.config.Span``) is passed only when the run is part of a longer one (prune steps);
#: ``regime`` says where the model starts (``train.policy``: "scratch" for fresh weights), unless the training
#: options name one
Trainer = Callable[..., list[dict]]


@dataclass(frozen=True)
class LoaderOptions:
    """How a verb reads training batches: one object for the batch size, the seed and the augmentation.

    ``seed`` seeds what the verb draws itself (prune's calibration batches, born-again's fresh
    initialisations) and the default trainer's shuffles and crops."""

    batch_size: int = 64
    seed: int = 0
    crop_padding: int = 0
    hflip: bool = False

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.crop_padding < 0:
            raise ValueError(
                f"LoaderOptions: batch_size must be > 0 and crop_padding >= 0; "
                f"received batch_size={self.batch_size}, crop_padding={self.crop_padding}"
            )


def _quiet() -> RuntimeConfig:
    return RuntimeConfig(progress=False, tensorboard=False)


@dataclass(frozen=True)
class Context:
    """Where a verb runs: ``runtime`` (device, AMP, threads: its own forward passes and the default
    trainer's), ``loader`` (batch size, seed, augmentation) and ``latency`` (how a latency target is
    timed; read by prune). A recipe's context is its ``runtime``, ``data`` and ``measure`` blocks."""

    runtime: RuntimeConfig = field(default_factory=_quiet)
    loader: LoaderOptions = field(default_factory=LoaderOptions)
    latency: LatencyConfig | None = None


def fit_trainer(opts: TrainingOptions, data: DataBundle, context: Context | None = None, desc: str = "") -> Trainer:
    """The library's trainer: ``fit`` with ``opts``' optimizer, schedule and grad clip, the context's
    runtime and loader (batch size, seed, crop, flip), no checkpoints."""
    ctx = context or Context()

    def train(  # type: ignore[no-untyped-def]
        model: nn.Module,
        objective: nn.Module,
        epochs: float,
        tag: str,
        on_step=None,
        span: Span | None = None,
        regime: Regime = "finetune",
    ) -> list[dict]:
        settings = policy.settings(opts, epochs, policy.regime_of(opts, regime), span)
        lo = ctx.loader
        return fit(
            model,
            data,
            settings,
            objective,
            runtime=ctx.runtime,
            seed=lo.seed,
            batch_size=lo.batch_size,
            crop_padding=lo.crop_padding,
            hflip=lo.hflip,
            on_step=on_step,
            desc=f"{desc}/{tag}" if desc else tag,
        )

    return train
