"""Hinton knowledge distillation (Hinton, Vinyals & Dean, 2015,
"Distilling the Knowledge in a Neural Network").

    L = alpha * T^2 * KL( softmax(z_t / T) || softmax(z_s / T) ) + (1 - alpha) * CE(z_s, y)

The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T
changes. With no labels (label-free), L = T^2 * KL(...).

``standardize: true`` is logit standardisation (Sun et al., 2024, "Logit Standardization in
Knowledge Distillation", CVPR): both logit vectors are z-scored per sample before the softmax,

    Z(z) = (z - mean(z)) / std(z)        (mean and unbiased std over the classes, as in the authors' code)
    L_KD = T^2 * KL( softmax(Z(z_t) / T) || softmax(Z(z_s) / T) )

so the student has to match the teacher's logit *relations*, not their range (a small student
cannot reach a large teacher's logit magnitudes). The CE term keeps the raw logits. The authors
use larger KD weights with it (e.g. alpha close to 1 and T around 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs, same_shape


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_t || p_s) at temperature T, averaged over the batch."""
    same_shape(student_logits, teacher_logits)
    t = temperature
    log_ps = F.log_softmax(student_logits.float() / t, dim=1)
    log_pt = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean") * (t * t)


def standardize(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-sample z-score over the classes (Sun et al. 2024)."""
    z = z.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


@LOSSES.register("kd")
class KDLoss(DistillLoss):
    zero_when_equal = True
    schedulable = ("temperature", "alpha")

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 0.9,
        label_smoothing: float = 0.0,
        standardize: bool = False,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"kd.temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"kd.alpha must be in [0, 1], got {alpha}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"kd.label_smoothing must be in [0, 1), got {label_smoothing}")
        if not isinstance(standardize, bool):
            raise ValueError(f"kd.standardize must be true or false, got {standardize!r}")
        self.temperature, self.alpha, self.label_smoothing = temperature, alpha, label_smoothing
        self.standardize = standardize

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        zs, zt = student.logits, teacher.logits.detach()
        same_shape(zs, zt)
        if self.standardize:
            zs, zt = standardize(zs), standardize(zt)
        kd = soft_kl(zs, zt, self.temperature)
        if targets is None:
            return kd
        ce = F.cross_entropy(student.logits.float(), targets, label_smoothing=self.label_smoothing)
        return self.alpha * kd + (1.0 - self.alpha) * ce
