"""Multi-teacher distillation: several teachers act as one through their weighted mean logits.

    z_t = sum_i w_i z_t^(i) / sum_i w_i            (equal weights by default)

Averaging logits (not probabilities) keeps every loss's formula unchanged: the ensemble is just a
teacher. Feature taps address one member by path, e.g. ``members.0.layer3``; the teachers must
agree on the number of classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distillprune.errors import DataError


class TeacherEnsemble(nn.Module):
    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None):
        super().__init__()
        if not members:
            raise ValueError("a teacher ensemble needs at least one teacher")
        w = [1.0] * len(members) if weights is None else [float(v) for v in weights]
        if len(w) != len(members):
            raise ValueError(f"{len(members)} teachers but {len(w)} teacher_weights")
        if any(v < 0 for v in w) or sum(w) <= 0:
            raise ValueError(f"teacher_weights must be >= 0 with a positive sum, got {w}")
        self.members = nn.ModuleList(members)
        self.weights = [v / sum(w) for v in w]

    def forward(self, *args: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        outs = [m(*args, **named) for m in self.members]  # named: the inputs of text models
        shapes = {tuple(o.shape) for o in outs}
        if len(shapes) > 1:
            raise DataError(f"the teachers' logits differ in shape: {sorted(shapes)}")
        return sum(w * o.float() for w, o in zip(self.weights, outs, strict=True))
