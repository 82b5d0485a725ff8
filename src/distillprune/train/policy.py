"""How a run trains, from where its model starts: the training options a stage or verb was given, with what
they leave unset filled in by the *regime*.

- ``scratch`` (fresh weights: a train stage, a new student, a born-again generation): one-cycle (15% warm-up)
  at the optimizer's usual peak (SGD 0.1, AdamW 1e-3), BatchNorm as usual, no held-out checks.
- ``finetune`` (trained weights the run must not lose: the training inside prune, finetune, distill into the
  current model, QAT, low rank and clustering fine-tunes): a gentle peak (SGD 0.01, AdamW 1e-4) decaying to zero
  without warm-up (cosine), BatchNorm re-normalised before the first step (``train.batchnorm``) and frozen for
  the first :data:`FINETUNE_BN_FROZEN` of the budget, and the best point kept by held-out checks
  (``train.guard``). A warm-up to a from-scratch learning rate is what erased a recovered student's start:
  on the real ResNet-56 at 2x, one-cycle at 0.05 took 84.0% down to 70.3% within the first epoch
  (docs/benchmarks.md, "Fine-tuning keeps what recovery won").

Everything given explicitly wins over the regime's default.
"""

from __future__ import annotations

from typing import Literal

from distillprune.train.config import ScheduleConfig, Span, TrainingOptions
from distillprune.train.trainer import FitSettings, spanned

Regime = Literal["scratch", "finetune"]

SCRATCH_LR = {"sgd": 0.1, "adamw": 1e-3}
FINETUNE_LR = {"sgd": 0.01, "adamw": 1e-4}
SCRATCH_SCHEDULE = ScheduleConfig(name="onecycle", warmup_fraction=0.15, final_lr_fraction=0.0)
FINETUNE_SCHEDULE = ScheduleConfig(name="cosine", warmup_fraction=0.0, final_lr_fraction=0.0)
#: share of a fine-tune's budget with BatchNorm statistics frozen
FINETUNE_BN_FROZEN = 0.0


def regime_of(opts: TrainingOptions, default: Regime) -> Regime:
    """The options' regime; ``auto`` is the caller's ``default`` (the stage or verb knows where its model
    starts)."""
    return default if opts.regime == "auto" else opts.regime


def settings(opts: TrainingOptions, epochs: float, regime: Regime, span: Span | None = None) -> FitSettings:
    """``fit``'s settings for ``epochs`` of training with ``opts`` in their regime (see the module docstring):
    the one the options name, else ``regime`` (the caller's: where its model starts)."""
    tune = regime_of(opts, regime) == "finetune"
    lr = opts.optimizer.lr
    if lr is None:
        lr = (FINETUNE_LR if tune else SCRATCH_LR)[opts.optimizer.name]
    schedule = opts.schedule or (FINETUNE_SCHEDULE if tune else SCRATCH_SCHEDULE)
    keep = opts.keep_best.enabled if opts.keep_best.enabled is not None else tune
    bn = opts.batchnorm
    return FitSettings(
        epochs,
        opts.optimizer.model_copy(update={"lr": lr}),
        schedule,
        opts.grad_clip,
        *spanned(span),
        keep_best=opts.keep_best if keep else None,
        bn_renormalize=bn.renormalize if bn.renormalize is not None else tune,
        bn_frozen=bn.frozen if bn.frozen is not None else (FINETUNE_BN_FROZEN if tune else 0.0),
        trainable_first=opts.trainable.first,
        trainable_share=opts.trainable.share,
    )
