"""Hinton knowledge distillation (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a Neural Network").

    L = alpha * T^2 * KL( softmax(z_t / T) || softmax(z_s / T) ) + (1 - alpha) * CE(z_s, y)

The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T
changes. With no labels (label-free), L = T^2 * KL(...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs
from distillprune.errors import DistillpruneError


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_t || p_s) at temperature T, averaged over the batch."""
    if student_logits.shape != teacher_logits.shape:
        raise DistillpruneError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    t = temperature
    log_ps = F.log_softmax(student_logits.float() / t, dim=1)
    log_pt = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean") * (t * t)


@LOSSES.register("kd")
class KDLoss(DistillLoss):
    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"kd.temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"kd.alpha must be in [0, 1], got {alpha}")
        self.temperature, self.alpha, self.label_smoothing = temperature, alpha, label_smoothing

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        kd = soft_kl(student.logits, teacher.logits, self.temperature)
        if targets is None:
            return kd
        ce = F.cross_entropy(student.logits.float(), targets, label_smoothing=self.label_smoothing)
        return self.alpha * kd + (1.0 - self.alpha) * ce
