"""FitNets hints (Romero et al., 2015, "FitNets: Hints for Thin Deep Nets").

    L = mean_k || r_k(f_s^k) - f_t^k ||_2^2       (mean squared error per element)

``r_k`` is a regressor built automatically when widths differ: a 1x1 conv for feature maps, a
linear layer for vectors (identity when they match). Student maps larger than the teacher's are
average-pooled to the teacher's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillprune.distill.losses.base import LOSSES, DistillLoss, Outputs, parse_pairs, same_batch
from distillprune.errors import DistillpruneError


def make_adapter(s: torch.Tensor, t: torch.Tensor) -> nn.Module:
    if s.dim() != t.dim() or s.dim() not in (2, 4):
        raise DistillpruneError(f"cannot match student feature {tuple(s.shape)} to teacher feature {tuple(t.shape)}")
    if s.shape[1] == t.shape[1]:
        return nn.Identity()
    if s.dim() == 4:
        return nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False)
    return nn.Linear(s.shape[1], t.shape[1], bias=False)


@LOSSES.register("fitnet")
class FitNetLoss(DistillLoss):
    zero_when_equal = True
    example = {"pairs": [["f", "f"]]}

    def __init__(self, pairs: list[list[str]] | list[str]):
        super().__init__()
        self.taps = parse_pairs(pairs, "fitnet")
        self.adapters = nn.ModuleList()

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        self.adapters = nn.ModuleList(make_adapter(student.features[s], teacher.features[t]) for s, t in self.taps).to(
            student.logits.device
        )

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor | None) -> torch.Tensor:
        teacher = teacher.detach()
        total = student.logits.new_zeros(())
        for (s, t), adapt in zip(self.taps, self.adapters, strict=True):
            same_batch(student.features[s], teacher.features[t], f"feature '{s}'")
            fs, ft = adapt(student.features[s]), teacher.features[t]
            if fs.dim() == 4 and fs.shape[-2:] != ft.shape[-2:]:
                fs = F.adaptive_avg_pool2d(fs, (ft.shape[-2], ft.shape[-1]))
            total = total + F.mse_loss(fs.float(), ft.float())
        return total / len(self.taps)
