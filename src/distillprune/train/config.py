"""Options of the one training loop (train, distill, finetune and the training inside prune)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from distillprune.core.config import StrictModel


class OptimizerConfig(StrictModel):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="peak learning rate; unset: derived from the optimizer and the training regime "
        "(train.policy: 0.1 / 1e-3 from scratch, a gentle fraction of it when fine-tuning trained weights)",
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)


class ScheduleConfig(StrictModel):
    name: Literal["onecycle", "cosine", "linear", "constant"] = "onecycle"
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


class KeepBestConfig(StrictModel):
    """Never worse than the start: evaluate on a validation split held out of the training images (never the
    test split) several times per epoch, the start included, and keep the best point."""

    enabled: bool | None = Field(
        None,
        description="unset: on when fine-tuning trained weights (regime finetune), off from scratch and for a "
        "self-supervised objective (nothing to judge it by)",
    )
    per_epoch: int = Field(4, ge=1, le=1000, description="evaluations per epoch of training (at least one per run)")
    samples: int = Field(
        2000, ge=10, description="training images held out to judge on (at most a tenth of the training split)"
    )


class BatchNormConfig(StrictModel):
    """BatchNorm while a trained model is fine-tuned (a pruned and recovered student's statistics no longer
    match the batches it sees, so train-mode normalisation would change the function it starts from)."""

    renormalize: bool | None = Field(
        None,
        description="before training, re-estimate every BatchNorm's statistics on training batches and fold the "
        "change into its scale and shift, so the function is unchanged and train mode starts where eval mode is "
        "(unset: on for regime finetune)",
    )
    frozen: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="share of the training budget with BatchNorm statistics frozen (eval-mode normalisation; "
        "the scales and shifts still train); 1: throughout (unset: the regime's default)",
    )


class TrainableConfig(StrictModel):
    """Which parameters of a fine-tuned student train first: all of them, only the normalisation scales and shifts
    and the biases (``norms``), or those plus the layers next to each cut (``near_cuts``: layers whose width differs
    from the teacher's, and the first layer after a removed block); after ``share`` of the budget, everything."""

    first: Literal["all", "norms", "near_cuts"] = Field("all", description="all | norms | near_cuts")
    share: float = Field(0.25, gt=0, le=1, allow_inf_nan=False, description="share of the budget trained that way")


class TrainingOptions(StrictModel):
    """How a stage that trains optimises (train, distill, finetune, the training inside prune, QAT...).

    Options left unset follow the regime (``train.policy``): from scratch, one-cycle at the optimizer's usual
    peak; a fine-tune of trained weights (a pruned, distilled, factorised or clustered student), a gentle peak
    decaying to zero without warm-up, BatchNorm re-normalised, and the best validation point kept."""

    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig | None = Field(
        None, description="unset: onecycle from scratch; cosine without warm-up, decaying to 0, for a fine-tune"
    )
    grad_clip: float | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    regime: Literal["auto", "scratch", "finetune"] = Field(
        "auto",
        description="where the model starts: scratch (fresh weights) or finetune (trained weights, which the run "
        "must not lose); auto: train stages and fresh students are scratch, everything else a fine-tune",
    )
    keep_best: KeepBestConfig = KeepBestConfig()
    batchnorm: BatchNormConfig = BatchNormConfig()
    trainable: TrainableConfig = TrainableConfig()


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
    kept: list[dict] | None = None  # keep-best: the point each run ended on ({step, epoch, val_top1, val_loss})
    note: str | None = None  # keep-best: a run that never beat its start says so

    @classmethod
    def of(cls, history: list[dict]) -> TrainSummary | None:
        """The summary of ``fit``'s per-epoch records (None when nothing was trained); several runs (prune
        steps) may be concatenated: each run's last record carries its keep-best point."""
        if not history:
            return None
        ips = [h["images_per_s"] for h in history]
        acc = history[-1].get("test_acc")
        kept = [h["kept"] for h in history if isinstance(h.get("kept"), dict)]
        notes = sorted({h["note"] for h in history if isinstance(h.get("note"), str)})
        return cls(
            len(history),
            round(history[-1]["loss"], 4),
            round(sum(ips) / len(ips), 1),
            round(sum(h["seconds"] for h in history), 2),
            None if acc is None or acc != acc else round(acc, 2),
            kept or None,
            "; ".join(notes) or None,
        )
