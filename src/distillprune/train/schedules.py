"""Learning-rate schedules as pure functions of the global step (nothing to checkpoint but the step)."""

from __future__ import annotations

import math

from distillprune.train.config import ScheduleConfig


def lr_factor(cfg: ScheduleConfig, step: int, total: int) -> float:
    """Multiplier of the peak lr at ``step`` of ``total`` steps."""
    total = max(total, 1)
    lo = cfg.final_lr_fraction
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "cosine":
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    # one-cycle (Smith 2018): linear warm-up, then cosine annealing to the final fraction
    warm = int(cfg.warmup_fraction * total)
    if step < warm:
        return 0.1 + 0.9 * step / max(warm, 1)
    t = (step - warm) / max(total - warm, 1)
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
