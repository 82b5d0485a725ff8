"""DIST (Huang, You, Wang, Qian & Xu, 2022, "Knowledge Distillation from A Stronger Teacher", NeurIPS).

Instead of matching probabilities exactly (KL), match their *relations* with Pearson correlation,
which tolerates the shift and scale differences between a weak student and a strong teacher.
With Y = softmax(Z / T) for the batch (B x C):

    rho(u, v) = cov(u, v) / (std(u) std(v))                   (Pearson correlation)
    inter     = 1 - mean_i rho( Y_s[i, :], Y_t[i, :] )        (inter-class: each sample's class scores)
    intra     = 1 - mean_c rho( Y_s[:, c], Y_t[:, c] )        (intra-class: each class across the batch)
    L         = T^2 * ( beta * inter + gamma * intra )        (paper, CIFAR: beta 2, gamma 2, T 4)

eps = 1e-8 in the correlation's denominator, as in the authors' code.
"""

from __future__ import annotations

import torch

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs, same_shape


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise Pearson correlation of two (N, D) tensors."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@LOSSES.register("dist")
class DISTLoss(DistillLoss):
    zero_when_equal = True
    schedulable = ("beta", "gamma", "temperature")

    def __init__(self, beta: float = 2.0, gamma: float = 2.0, temperature: float = 4.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"dist.temperature must be > 0, got {temperature}")
        if beta < 0 or gamma < 0:
            raise ValueError(f"dist.beta and dist.gamma must be >= 0, got {beta} and {gamma}")
        self.beta, self.gamma, self.temperature = beta, gamma, temperature

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        zs, zt = student.logits.float(), teacher.logits.detach().float()
        same_shape(zs, zt)
        t = self.temperature
        ys, yt = (zs / t).softmax(dim=1), (zt / t).softmax(dim=1)
        inter = 1.0 - pearson(ys, yt).mean()
        intra = 1.0 - pearson(ys.t(), yt.t()).mean()
        return t * t * (self.beta * inter + self.gamma * intra)
