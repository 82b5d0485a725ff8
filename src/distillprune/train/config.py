"""Options of the one training loop (train, distill, finetune and the training inside prune)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from distillprune.core.config import StrictModel


class OptimizerConfig(StrictModel):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)


class ScheduleConfig(StrictModel):
    name: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_fraction: float = Field(0.15, ge=0, lt=1, description="onecycle: share of steps spent warming up")
    final_lr_fraction: float = Field(0.0, ge=0, le=1, description="lr at the end, as a share of the peak lr")


class RuntimeConfig(StrictModel):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    threads: int | None = Field(None, gt=0, description="torch intra-op threads for training (None: torch's default)")
    sync_bn: bool = Field(
        False,
        description="under torchrun: BatchNorm statistics over the global batch (all "
        "ranks) instead of each rank's share; slower, closer to a single process",
    )
    progress: bool = True
    tensorboard: bool = True
    val_loss: bool = Field(
        False,
        description="after each epoch also compute the stage's objective (the KD loss in distil stages) on the "
        "held-out split: val_loss in metrics.jsonl (distillprune tune's pruners read it)",
    )


class TrainingOptions(StrictModel):
    """How a stage that trains optimises (train, distill, finetune, the training inside prune, QAT...)."""

    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: float | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


@dataclass(frozen=True)
class Span:
    """Where one training run sits in a longer one (a prune step among the stage's steps): it starts
    ``start`` epochs into the stream of epochs, and its lr follows ``schedule`` = (offset, length) in epochs
    of a schedule shared with the other runs (None: a schedule of its own)."""

    start: float = 0.0
    schedule: tuple[float, float] | None = None


@dataclass
class TrainSummary:
    """What a training run did, for reports: epochs, last loss, throughput and time."""

    epochs: int
    final_loss: float
    train_images_per_s: float
    train_seconds: float
    final_test_acc: float | None = None

    @classmethod
    def of(cls, history: list[dict]) -> TrainSummary | None:
        """The summary of ``fit``'s per-epoch records (None when nothing was trained)."""
        if not history:
            return None
        ips = [h["images_per_s"] for h in history]
        acc = history[-1].get("test_acc")
        return cls(
            len(history),
            round(history[-1]["loss"], 4),
            round(sum(ips) / len(ips), 1),
            round(sum(h["seconds"] for h in history), 2),
            None if acc is None or acc != acc else round(acc, 2),
        )
