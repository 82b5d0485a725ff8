"""Cross-entropy on the labels, as a term to mix with distillation losses.

L = CE(z_s, y)          (0 when labels are withheld)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs


@LOSSES.register("ce")
class CELoss(DistillLoss):
    """Plain cross-entropy on the labels (a term to mix in; zero contribution when labels are withheld)."""

    reads_teacher = False
    schedulable = ("label_smoothing",)

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"ce.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        if targets is None:
            return student.logits.new_zeros(())
        return F.cross_entropy(student.logits.float(), targets, label_smoothing=self.label_smoothing)
