"""Decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang, 2022, "Decoupled Knowledge
Distillation", CVPR).

Classical KD splits into a target-class term (TCKD) and a non-target-class term (NCKD), and
DKD weights them independently. With y the label, p = softmax(z / T):

    b      = [p_y, 1 - p_y]                                    (binary: target vs the rest)
    p~     = softmax(z_{c != y} / T)                          (distribution among non-target classes)
    TCKD   = T^2 * KL(b_t || b_s)
    NCKD   = T^2 * KL(p~_t || p~_s)
    L      = alpha * TCKD + beta * NCKD                        (paper, CIFAR: alpha 1, beta 8, T 4)

Both KLs are averaged over the batch. The paper adds cross-entropy and ramps the DKD weight up
over the first 20 epochs: in a recipe that is ``[{name: ce}, {name: dkd, weight: {start: 0, end: 1,
fraction: 0.1}}]``. DKD needs the labels (it cannot run label-free).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs, same_shape
from distillprune.distill.losses.kd import soft_kl
from distillprune.errors import DistillpruneError


def _binary_log_probs(log_p: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """(B, C) log-probabilities -> (B, 2) log [p_y, 1 - p_y], computed without 1 - p cancellation."""
    log_py = log_p.masked_select(target_mask).unsqueeze(1)
    rest = log_p.masked_fill(target_mask, float("-inf")).logsumexp(dim=1, keepdim=True)
    return torch.cat([log_py, rest], dim=1)


def _non_target(z: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    return z.masked_select(~target_mask).view(z.shape[0], z.shape[1] - 1)


@LOSSES.register("dkd")
class DKDLoss(DistillLoss):
    zero_when_equal = True
    needs_labels = True
    schedulable = ("alpha", "beta", "temperature")

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"dkd.temperature must be > 0, got {temperature}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"dkd.alpha and dkd.beta must be >= 0, got {alpha} and {beta}")
        self.alpha, self.beta, self.temperature = alpha, beta, temperature

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        if targets is None:
            raise DistillpruneError(
                "dkd needs labels (the target class splits TCKD from NCKD); the data has none: "
                "use kd, dist, rkd, pkt, at, fitnet or crd for label-free distillation"
            )
        zs, zt = student.logits.float(), teacher.logits.detach().float()
        same_shape(zs, zt)
        if zs.shape[1] < 2:
            raise DistillpruneError(f"dkd needs at least 2 classes, got logits {tuple(zs.shape)}")
        t = self.temperature
        mask = F.one_hot(targets, zs.shape[1]).bool()
        bs = _binary_log_probs(F.log_softmax(zs / t, dim=1), mask)
        bt = _binary_log_probs(F.log_softmax(zt / t, dim=1), mask)
        tckd = F.kl_div(bs, bt, log_target=True, reduction="batchmean") * (t * t)
        nckd = soft_kl(_non_target(zs, mask), _non_target(zt, mask), t)
        return self.alpha * tckd + self.beta * nckd
