"""How a pruned candidate is judged before any fine-tuning: its BatchNorm statistics re-estimated on calibration
batches, then its KD loss to the teacher and its top-1 on a validation split of the training data (the
planner's estimate, ``prune.planner``; the session re-estimates BatchNorm the same way after a cut)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor | None]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Re-estimate BatchNorm running statistics (cumulative average) on ``batches``: after a cut, the
    statistics of the layers downstream no longer match their inputs."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or not batches:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    was = model.training
    model.train()
    for x in batches:
        model(x)
    for bn, m in zip(bns, momenta, strict=True):
        bn.momentum = m
    model.train(was)


@torch.no_grad()
def estimate(
    model: nn.Module, batches: Sequence[Batch], teacher_logits: Sequence[torch.Tensor]
) -> tuple[float, float | None]:
    """(KD loss at T=1 to the teacher, top-1 % when labelled) on the validation batches."""
    from distillprune.distill.losses.kd import soft_kl

    was = model.training
    model.eval()
    kd, correct, n, labelled = 0.0, 0, 0, True
    for (x, y), t in zip(batches, teacher_logits, strict=True):
        out = model(x)
        kd += float(soft_kl(out, t, 1.0)) * len(x)
        n += len(x)
        if y is None:
            labelled = False
        else:
            correct += int((out.argmax(1) == y).sum())
    model.train(was)
    return kd / max(n, 1), (100.0 * correct / n if labelled and n else None)
