"""What every verb shares besides its model, config and data: where it runs (``Context``) and how it reads
training batches (``LoaderOptions``). ``train.trainer.fit`` takes the same ``context``; how a verb trains is
its ``Trainer`` (``train.trainers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distillprune.measure.latency import LatencyConfig
from distillprune.train.config import RuntimeConfig

__all__ = ["Context", "LoaderOptions"]


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
